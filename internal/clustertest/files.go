package clustertest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// RandomFile writes size random bytes to a new file named name in a
// temporary folder and returns its path and hex SHA-256.
func RandomFile(t testing.TB, name string, size int64) (string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path, hex.EncodeToString(h.Sum(nil))
}

// FileSHA256 is the hex SHA-256 of the file at path.
func FileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("the file: %v", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TransferOf is the transfer a file event line carries, or nil.
func TransferOf(l Line) map[string]any {
	t, _ := l["transfer"].(map[string]any)
	return t
}

// WaitFile waits until the transfer matched by match (incoming file name,
// or outgoing transfer id) settles, and returns its file_done line; a
// failed or cancelled transfer fails the test.
func (cl *Client) WaitFile(d time.Duration, name, id string) Line {
	cl.t.Helper()
	var done Line
	cl.WaitFor(d, "file "+name+id+" done", func(ls []Line) bool {
		for _, l := range ls {
			tr := TransferOf(l)
			if tr == nil {
				continue
			}
			if id != "" && l.S("id") != id {
				continue
			}
			if name != "" && (tr["name"] != name || tr["outgoing"] == true) {
				continue
			}
			switch l.S("type") {
			case "file_done":
				done = l
				return true
			case "file_failed", "file_cancelled":
				cl.t.Fatalf("%s: file %s%s ended: %s", cl.Name, name, id, l.S("text"))
			}
		}
		return false
	})
	return done
}
