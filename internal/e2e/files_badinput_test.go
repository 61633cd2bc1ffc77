package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/downloads"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/p2p"
	"github.com/e2em/e2em/desktop/engine/wire"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// Paths, people and groups that cannot be sent to get one clear line
// each, and nothing sent before or after is lost.
func TestFileBadInputGetsClearAnswers(t *testing.T) {
	c := sharedCluster(t)
	a, b := account(t, c, "fba", "971"), account(t, c, "fbb", "972")
	first, firstSum := randomFile(t, "first.bin", 1<<20)
	sendAndCheck(t, a, b, "fbb972", first, firstSum)
	a.Deliver(b, "fbb972", "before the bad input")

	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ok, _ := randomFile(t, "ok.txt", 10)
	a.Do("Create fbg971")
	for line, want := range map[string]string{
		"Send_file /no/such/file.pdf fbb972":       "there is no file",
		"Send_file fbb972 " + ok:                   "the file comes first",
		"Send_file " + dir + " fbb972":             "is a folder",
		"Send_file " + fifo + " fbb972":            "is not a regular file",
		"Send_file " + ok + " nobody979":           "no account is called",
		"Send_file " + ok + " fba971":              "that is you",
		"Send_group_File " + ok + " 1 nogroup979":  "nogroup979",
		"Send_group_File " + ok + " 1 fbg971":      "nobody else is in",
		"Send_group_File 2 fbg971 fbg971 " + ok:    "the file comes first",
		"Send_file":                                "usage: Send_file <file> <recipient>",
		"Send_group_File " + ok + " 3 fbg971 only": "usage: Send_group_File <file> <n>",
		"Cancel 0000000000":                        "no transfer",
	} {
		r := a.Try(line)
		if r["ok"] == true || !strings.Contains(r.S("error"), want) {
			t.Errorf("%q answered %v; want an error with %q", line, r, want)
		}
	}
	if os.Geteuid() != 0 {
		locked, _ := randomFile(t, "locked.bin", 10)
		os.Chmod(locked, 0)
		if r := a.Try("Send_file " + locked + " fbb972"); r["ok"] == true || !strings.Contains(r.S("error"), "permission denied") {
			t.Errorf("an unreadable file: %v", r)
		}
	} else {
		t.Log("running as root: every file is readable, so an unreadable one cannot be made here")
	}

	// An empty file is a file: it arrives, empty.
	empty := filepath.Join(t.TempDir(), "empty.txt")
	os.WriteFile(empty, nil, 0o600)
	sendAndCheck(t, a, b, "fbb972", empty, hex.EncodeToString(sha256.New().Sum(nil)))

	// Nothing before was lost or damaged.
	a.Deliver(b, "fbb972", "after the bad input")
	h := b.Do("History fba971 50").S("text")
	for _, want := range []string{"before the bad input", "first.bin", "empty.txt", "after the bad input"} {
		if !strings.Contains(h, want) {
			t.Fatalf("history lost %q:\n%s", want, h)
		}
	}
	if got := fileSHA(t, filepath.Join(b.Profile, "downloads", "first.bin")); got != firstSum {
		t.Fatalf("an earlier file changed: %s", got)
	}
}

// A file larger than the free space of the recipient's downloads folder
// is refused before any chunk is sent, and the sender told why.
func TestFileLargerThanFreeSpaceIsRefused(t *testing.T) {
	ct.RequireRoot(t)
	c := sharedCluster(t)
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Fatalf("mount a small file system: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", small).Run() })
	a := account(t, c, "fsa", "981")
	b := c.StartClient(t, "fsb982", ct.ClientOptions{Args: []string{"-downloads", small}})
	b.Do("Sign up fsb 982 password123")
	b.Do("Login fsb982 password123")
	path, _ := randomFile(t, "toolarge.bin", 3<<20)
	id := a.Do("Send_file " + path + " fsb982").S("id")
	failed := a.WaitEvent(fileWait, "file_failed", map[string]string{"id": id})
	if !strings.Contains(failed.S("text"), "not enough free space on fsb982's machine") {
		t.Fatalf("the sender was told %q", failed.S("text"))
	}
	rs := recipients(transferOf(failed))
	if len(rs) != 1 || num(rs[0], "sent") != 0 {
		t.Fatalf("chunks were sent to a recipient without room: %v", rs)
	}
	b.WaitEvent(wait, "file_failed", nil)
	if m, _ := filepath.Glob(filepath.Join(small, "*")); len(m) != 0 {
		t.Fatalf("left in the small folder: %v", m)
	}
	if m, _ := filepath.Glob(filepath.Join(small, ".e2em-*")); len(m) != 0 {
		t.Fatalf("partial left: %v", m)
	}
}

// mallory is a registered client under the test's control: an engine in
// this process whose libp2p host the test uses to play a hostile sender.
type mallory struct {
	*engine.Engine
	login string
	logs  *syncBuffer
	sess  interface {
		SealForTest([]byte) ([]byte, error)
		WriteRawFrame(*wire.Frame) error
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newMallory(t *testing.T, c *ct.Cluster, name, roll string, victim *ct.Client, victimLogin string) *mallory {
	t.Helper()
	logs := &syncBuffer{}
	eng, err := engine.New(engine.Config{Profile: filepath.Join(t.TempDir(), "mallory"), LB: c.Layout.LB, CAFile: c.CAFile(),
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	go func() {
		for range eng.Events() {
		}
	}()
	ctx := context.Background()
	if _, err := eng.SignUp(ctx, name, roll, "password123"); err != nil {
		t.Fatal(err)
	}
	m := &mallory{Engine: eng, login: name + roll, logs: logs}
	if err := eng.Login(ctx, m.login, "password123"); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Send(ctx, victimLogin, "hello, I have files for you"); err != nil {
		t.Fatal(err)
	}
	victim.WaitEvent(wait, "message", map[string]string{"from": m.login})
	m.sess = directSession(t, eng, victimLogin)
	return m
}

// send seals a payload on the live session, as mallory's own client would.
func (m *mallory) send(t *testing.T, p *wire.Payload) {
	t.Helper()
	p.From, p.SentUnixNano = m.login, time.Now().UnixNano()
	if p.Id == "" {
		p.Id = randHex(12)
	}
	b, _ := proto.Marshal(p)
	rec, err := m.sess.SealForTest(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.sess.WriteRawFrame(&wire.Frame{Kind: &wire.Frame_Record{Record: rec}}); err != nil {
		t.Fatal(err)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// craftedFile is a file mallory offers and serves by hand.
type craftedFile struct {
	offer  *wire.FileOffer
	chunks [][]byte // sealed
	data   []byte
}

func craft(name string, data []byte, wrongHash bool) *craftedFile {
	key, _ := e2e.NewFileKey(rand.Reader)
	sum := sha256.Sum256(data)
	if wrongHash {
		sum[0] ^= 1
	}
	token := make([]byte, 16)
	rand.Read(token)
	f := &craftedFile{data: data, offer: &wire.FileOffer{TransferId: randHex(12), Name: name, Size: uint64(len(data)),
		ChunkSize: wire.MinChunkSize, Sha256: sum[:], FileKey: key, Token: token}}
	for i := uint64(0); i < wire.ChunkCount(uint64(len(data)), wire.MinChunkSize); i++ {
		end := min(uint64(len(data)), (i+1)*wire.MinChunkSize)
		sealed, _ := e2e.SealChunk(key, i, data[i*wire.MinChunkSize:end], rand.Reader)
		f.chunks = append(f.chunks, sealed)
	}
	return f
}

func dataFrame(i uint64, sealed []byte) []byte {
	b, _ := proto.Marshal(&wire.FileFrame{Kind: &wire.FileFrame_Data{Data: &wire.FileData{Index: i, Sealed: sealed}}})
	return append(protowire.AppendVarint(nil, uint64(len(b))), b...)
}

// A hostile sender's names, chunks and manifests: names are made safe and
// kept inside the downloads folder; a tampered or truncated chunk is
// refused and fetched again; a chunk nobody offered is ignored; a manifest
// whose hash does not match is deleted and the sender told; a sender that
// ignores the flow control gets nowhere. Each is reported in one line, and
// nothing else is damaged.
func TestHostileFileSender(t *testing.T) {
	c := sharedCluster(t)
	bob := account(t, c, "fhb", "991")
	mal := newMallory(t, c, "fhm", "992", bob, "fhb991")
	downloadsDir := filepath.Join(bob.Profile, "downloads")

	// Names: each arrives as an empty file under a safe name.
	names := []string{"../../escape.txt", "/etc/passwd", "a\x00b", "CON", strings.Repeat("n", 300) + ".txt", "..", "."}
	for _, n := range names {
		mal.send(t, &wire.Payload{Kind: &wire.Payload_FileOffer{FileOffer: craft(n, nil, false).offer}})
	}
	bob.WaitCount(fileWait, len(names), "file_done", nil)
	var savedNames []string
	for _, l := range bob.Lines() {
		if l.S("type") != "file_done" {
			continue
		}
		p, _ := transferOf(l)["path"].(string)
		if filepath.Dir(p) != downloadsDir {
			t.Fatalf("saved outside the downloads folder: %q", p)
		}
		savedNames = append(savedNames, filepath.Base(p))
	}
	for _, n := range names {
		want := downloads.SanitizeName(n)
		found := false
		for _, s := range savedNames {
			if s == want || strings.HasPrefix(s, strings.TrimSuffix(want, filepath.Ext(want))+" (") {
				found = true
			}
		}
		if !found || len(want) > 255 {
			t.Fatalf("%q was not saved as %q: %v", n, want, savedNames)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(bob.Profile)), "escape.txt")); err == nil {
		t.Fatal("a file escaped the downloads folder")
	}

	// A chunk for a transfer nobody offered.
	mal.send(t, &wire.Payload{Kind: &wire.Payload_FileChunk{FileChunk: &wire.FileChunk{TransferId: randHex(12), Index: 0, Sealed: []byte("junk")}}})
	bob.WaitFor(wait, "the stray chunk reported", func(ls []ct.Line) bool {
		for _, l := range ls {
			if l.S("type") == "security" && strings.Contains(l.S("text"), "for a transfer nobody offered") {
				return true
			}
		}
		return false
	})

	// Mallory's host now serves the crafted files by hand.
	data := make([]byte, 5*wire.MinChunkSize+100)
	rand.Read(data)
	tampered := craft("tampered.bin", data, false)
	mismatch := craft("mismatch.bin", data, true)
	flood := craft("flood.bin", bytes.Repeat(data, 64), false) // 5 MB: far past the window
	files := map[string]*craftedFile{}
	for _, f := range []*craftedFile{tampered, mismatch, flood} {
		files[f.offer.TransferId] = f
	}
	var mu sync.Mutex
	attempts := map[string]int{}
	mal.Host().SetStreamHandler(p2p.FileProtocolID, func(st network.Stream) {
		defer st.Close()
		fr, err := wire.ReadFileFrame(bufio.NewReader(st))
		if err != nil || fr.GetGet() == nil {
			st.Reset()
			return
		}
		get := fr.GetGet()
		f := files[get.TransferId]
		if f == nil || !bytes.Equal(get.Token, f.offer.Token) {
			st.Reset()
			return
		}
		mu.Lock()
		attempts[get.TransferId]++
		attempt := attempts[get.TransferId]
		mu.Unlock()
		for i, sealed := range f.chunks {
			if i/8 < len(get.Have) && get.Have[i/8]&(1<<(i%8)) != 0 {
				continue
			}
			frame := dataFrame(uint64(i), sealed)
			switch {
			case f == tampered && attempt == 1 && i == 1:
				bad := bytes.Clone(sealed)
				bad[len(bad)/2] ^= 0x40
				frame = dataFrame(uint64(i), bad)
			case f == tampered && attempt == 2 && i == 3:
				st.Write(frame[:len(frame)/2]) // truncated: the stream dies mid-chunk
				st.Reset()
				return
			}
			// The flooder writes everything at once, credit or not; the
			// others wait for nothing either (bob reads at his pace).
			if _, err := st.Write(frame); err != nil {
				return
			}
		}
		st.CloseWrite()
		io.Copy(io.Discard, st) // bob's credits
	})
	for _, f := range []*craftedFile{tampered, mismatch, flood} {
		mal.send(t, &wire.Payload{Kind: &wire.Payload_FileOffer{FileOffer: f.offer}})
	}
	saved := received(t, bob, "tampered.bin")
	if got, want := fileSHA(t, saved), hex.EncodeToString(sha256.New().Sum(nil)); got == want {
		t.Fatal("tampered.bin arrived empty")
	}
	if sum := sha256.Sum256(data); fileSHA(t, saved) != hex.EncodeToString(sum[:]) {
		t.Fatal("tampered.bin arrived damaged")
	}
	bob.WaitFor(wait, "the tampered chunk reported", func(ls []ct.Line) bool {
		for _, l := range ls {
			if l.S("type") == "security" && strings.Contains(l.S("text"), "rejected chunk 1 of tampered.bin") {
				return true
			}
		}
		return false
	})
	mu.Lock()
	if attempts[tampered.offer.TransferId] < 3 {
		t.Fatalf("tampered.bin was fetched %d times; the tampered and the truncated chunk each need another", attempts[tampered.offer.TransferId])
	}
	mu.Unlock()

	failed := bob.WaitEvent(fileWait, "file_failed", map[string]string{"from": "fhm992"})
	if !strings.Contains(failed.S("text"), "mismatch.bin does not match its SHA-256") {
		t.Fatalf("mismatch.bin: %q", failed.S("text"))
	}
	ct.Eventually(t, wait, func() error {
		if !strings.Contains(mal.logs.String(), `reason="mismatch.bin does not match its SHA-256`) {
			return fmt.Errorf("the sender was not told of the mismatch")
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(downloadsDir, "mismatch.bin")); err == nil {
		t.Fatal("a file that failed its hash was kept")
	}

	// The flooder: bob either takes the file whole or gives up on it with
	// a reason; he is not hurt either way.
	bob.WaitFor(fileWait, "flood.bin settled", func(ls []ct.Line) bool {
		for _, l := range ls {
			if tr := transferOf(l); tr != nil && tr["name"] == "flood.bin" && (l.S("type") == "file_done" || l.S("type") == "file_failed") {
				t.Logf("the flooder's file: %s %s", l.S("type"), l.S("text"))
				return true
			}
		}
		return false
	})
	if p := filepath.Join(downloadsDir, "flood.bin"); fileExists(p) {
		if sum := sha256.Sum256(bytes.Repeat(data, 64)); fileSHA(t, p) != hex.EncodeToString(sum[:]) {
			t.Fatal("flood.bin was saved damaged")
		}
	}
	if m, _ := filepath.Glob(filepath.Join(downloadsDir, ".e2em-*")); len(m) != 0 {
		t.Fatalf("partial files left: %v", m)
	}
	// Bob still talks.
	if _, err := mal.Send(context.Background(), "fhb991", "still there?"); err != nil {
		t.Fatal(err)
	}
	bob.WaitEvent(wait, "message", map[string]string{"body": "still there?"})
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
