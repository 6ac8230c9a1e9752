"""Who may do what: authentication, clients, purposes and the access decision."""
