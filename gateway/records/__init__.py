"""The member's data and its changes: members, consents, enrichment, cleansing."""
