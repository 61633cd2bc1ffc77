package downloads

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestSanitizeName(t *testing.T) {
	for in, want := range map[string]string{
		"payload.bin":           "payload.bin",
		"../../x":               "x",
		"/etc/passwd":           "passwd",
		`..\..\windows\win.ini`: "win.ini",
		"a\x00b":                "a_b",
		"a\nb\tc":               "a_b_c",
		"CON":                   "_CON",
		"con.txt":               "_con.txt",
		"LPT1.tar.gz":           "_LPT1.tar.gz",
		"nul":                   "_nul",
		".":                     "file",
		"..":                    "file",
		"...":                   "file",
		"":                      "file",
		".bashrc":               "bashrc",
		"x/":                    "file",
		"bad\xffutf8.txt":       "bad_utf8.txt",
		"invoice\u202etxt.exe":  "invoice_txt.exe",
		"what?.txt":             "what_.txt",
		"trailing. ":            "trailing",
		"résumé.pdf":            "résumé.pdf",
	} {
		if got := SanitizeName(in); got != want {
			t.Errorf("SanitizeName(%q) = %q, want %q", in, got, want)
		}
	}
	long := strings.Repeat("é", 200) + ".pdf" // 404 bytes
	got := SanitizeName(long)
	if len(got) > MaxNameBytes || !utf8.ValidString(got) || !strings.HasSuffix(got, ".pdf") {
		t.Fatalf("300-byte name became %d bytes %q", len(got), got)
	}
	// Found by FuzzSanitizeName: the cut left trailing spaces that a
	// second pass removed.
	cut := SanitizeName("x" + strings.Repeat(" ", 254) + "\xf0")
	if cut != "x" || SanitizeName(cut) != cut {
		t.Fatalf("a cut name ending in spaces became %q", cut)
	}
}

// FuzzSanitizeName: whatever a peer names its file, the result is one
// harmless name inside the folder.
func FuzzSanitizeName(f *testing.F) {
	for _, s := range []string{"payload.bin", "../../x", "/etc/passwd", "a\x00b", "CON", "..", strings.Repeat("x", 300), "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		n := SanitizeName(in)
		switch {
		case n == "" || n == "." || n == "..":
			t.Fatalf("%q → %q", in, n)
		case len(n) > MaxNameBytes || !utf8.ValidString(n):
			t.Fatalf("%q → %q: too long or not UTF-8", in, n)
		case strings.ContainsAny(n, `/\`) || strings.HasPrefix(n, "."):
			t.Fatalf("%q → %q: path part or hidden", in, n)
		case filepath.Dir(filepath.Join("/d", n)) != "/d":
			t.Fatalf("%q → %q leaves the folder", in, n)
		}
		for _, r := range n {
			if unicode.IsControl(r) {
				t.Fatalf("%q → %q: control character", in, n)
			}
		}
		if SanitizeName(n) != n {
			t.Fatalf("%q → %q is not stable", in, n)
		}
	})
}

func TestPartialThenFinishNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	f, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "report.pdf"), []byte("mine"), 0o600)
	var saved []string
	for i, key := range []string{"aa01", "aa02"} {
		p, err := f.CreatePartial(key, 4)
		if err != nil {
			t.Fatal(err)
		}
		p.WriteString("new" + string(rune('0'+i)))
		p.Close()
		final, err := f.Finish(key, "../report.pdf")
		if err != nil {
			t.Fatal(err)
		}
		saved = append(saved, filepath.Base(final))
		if filepath.Dir(final) != f.Dir() {
			t.Fatalf("saved outside the folder: %s", final)
		}
	}
	if saved[0] != "report (1).pdf" || saved[1] != "report (2).pdf" {
		t.Fatalf("saved as %v", saved)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "report.pdf")); string(b) != "mine" {
		t.Fatalf("the existing file was overwritten: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "report (2).pdf")); string(b) != "new1" {
		t.Fatalf("second file: %q", b)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".e2em-*")); len(m) != 0 {
		t.Fatalf("partial files left: %v", m)
	}
}

func TestPartialRefusesLinksAndBadKeys(t *testing.T) {
	dir := t.TempDir()
	f, _ := Open(dir)
	target := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(target, []byte("keep"), 0o600)
	os.Symlink(target, filepath.Join(dir, ".e2em-bb.part"))
	p, err := f.CreatePartial("bb", 3)
	if err != nil {
		t.Fatal(err)
	}
	p.WriteString("xyz")
	p.Close()
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatalf("wrote through a link: %q", b)
	}
	for _, key := range []string{"../x", "", "AB", "a/b"} {
		if _, err := f.CreatePartial(key, 1); err == nil {
			t.Errorf("key %q accepted", key)
		}
	}
}

func TestNoSpaceIsFoundBeforeAnythingIsWritten(t *testing.T) {
	f, _ := Open(t.TempDir())
	free, err := f.Free()
	if err != nil || free == 0 {
		t.Fatalf("free: %d %v", free, err)
	}
	_, err = f.CreatePartial("cc", int64(free)+1<<30)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a file larger than the disk: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(f.Dir(), ".e2em-*")); len(m) != 0 {
		t.Fatalf("partial left: %v", m)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1000: "1.0 kB", 20_000_000: "20.0 MB", 2 << 30: "2.1 GB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("%d: %q, want %q", n, got, want)
		}
	}
}
