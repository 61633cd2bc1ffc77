package api

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedCodeIsFresh regenerates the protobuf code into a temporary
// folder and compares it with what is committed: a schema change without
// `make proto` fails here.
func TestGeneratedCodeIsFresh(t *testing.T) {
	for _, tool := range []string{"protoc", "protoc-gen-go", "protoc-gen-go-grpc"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing; make deps installs it", tool)
			}
			t.Skipf("%s not installed (make deps installs it)", tool)
		}
	}
	root := filepath.Join("..", "..")
	out := t.TempDir()
	protos := []string{"coord/api/coord.proto", "coord/store/statepb/state.proto", "desktop/engine/wire/wire.proto"}
	args := append([]string{"-I", root, "--go_out=" + out, "--go_opt=paths=source_relative",
		"--go-grpc_out=" + out, "--go-grpc_opt=paths=source_relative"}, protos...)
	if b, err := exec.Command("protoc", args...).CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, b)
	}
	for _, f := range []string{"coord/api/coord.pb.go", "coord/api/coord_grpc.pb.go", "coord/store/statepb/state.pb.go", "desktop/engine/wire/wire.pb.go"} {
		fresh, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s is stale: run make proto", f)
		}
	}
}
