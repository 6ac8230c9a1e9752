// A standard tlog-tiles client against a live Tillit log: Go's own golang.org/x/mod/sumdb/tlog
// and sumdb/note (Debian's golang-golang-x-mod-dev), as the Go checksum database's clients use
// them. It verifies the checkpoint's signature with the log's verifier key, reads the hash tiles
// from GET /audit/tile/<L>/<N>[.p/<W>] (the C2SP path: tlog's own minus its height element,
// which C2SP fixes at 8), and through tlog's TileHashReader, which checks every tile it reads
// against the signed root, proves records and an older checkpoint's tree.
//
// Usage: go run main.go <base URL> <verifier key> <older size>
// Prints one line per check and exits 0 when all hold.
package main

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type tiles struct{ base string }

func (t tiles) Height() int { return 8 }

func (t tiles) ReadTiles(wanted []tlog.Tile) ([][]byte, error) {
	data := make([][]byte, len(wanted))
	for i, tile := range wanted {
		path := strings.TrimPrefix(tile.Path(), "tile/8/")
		body, err := get(t.base + "/audit/tile/" + path)
		if err != nil {
			return nil, err
		}
		data[i] = body
	}
	return data, nil
}

func (t tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func get(url string) ([]byte, error) {
	response, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return nil, err
	}
	if response.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %d %s", url, response.StatusCode, body)
	}
	return body, nil
}

func checkpoint(base, vkey, query string) (tlog.Tree, error) {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return tlog.Tree{}, err
	}
	signed, err := get(base + "/audit/checkpoint" + query)
	if err != nil {
		return tlog.Tree{}, err
	}
	opened, err := note.Open(signed, note.VerifierList(verifier))
	if err != nil {
		return tlog.Tree{}, err
	}
	// C2SP tlog-checkpoint: origin, size, base64 root hash, then extension lines.
	lines := strings.Split(opened.Text, "\n")
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return tlog.Tree{}, err
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return tlog.Tree{}, fmt.Errorf("bad root %q", lines[2])
	}
	var hash tlog.Hash
	copy(hash[:], root)
	return tlog.Tree{N: size, Hash: hash}, nil
}

func main() {
	base, vkey := os.Args[1], os.Args[2]
	older, err := strconv.ParseInt(os.Args[3], 10, 64)
	fail(err)
	tree, err := checkpoint(base, vkey, "")
	fail(err)
	fmt.Printf("checkpoint %d verified\n", tree.N)
	reader := tlog.TileHashReader(tree, tiles{base})
	for _, index := range []int64{0, 1, 255, 256, tree.N / 2, tree.N - 1} {
		leaves, err := reader.ReadHashes([]int64{tlog.StoredHashIndex(0, index)})
		fail(err)
		proof, err := tlog.ProveRecord(tree.N, index, reader)
		fail(err)
		fail(tlog.CheckRecord(proof, tree.N, tree.Hash, index, leaves[0]))
		fmt.Printf("record %d included\n", index)
	}
	old, err := checkpoint(base, vkey, "?size="+strconv.FormatInt(older, 10))
	fail(err)
	proof, err := tlog.ProveTree(tree.N, old.N, reader)
	fail(err)
	fail(tlog.CheckTree(proof, tree.N, tree.Hash, old.N, old.Hash))
	fmt.Printf("tree %d is a prefix of %d\n", old.N, tree.N)
}

func fail(err error) {
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
}
