package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/wire"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// fileWait bounds one file's trip in these tests (50 MB at the slowest CI
// machine's 3DES takes seconds, not minutes).
const fileWait = 3 * time.Minute

func randomFile(t *testing.T, name string, size int) (string, string) {
	return ct.RandomFile(t, name, int64(size))
}

func fileSHA(t *testing.T, path string) string { return ct.FileSHA256(t, path) }

func transferOf(l ct.Line) map[string]any { return ct.TransferOf(l) }

// received waits until cl has saved the incoming file name, and returns
// where.
func received(t *testing.T, cl *ct.Client, name string) string {
	t.Helper()
	path, _ := ct.TransferOf(cl.WaitFile(fileWait, name, ""))["path"].(string)
	return path
}

// sentDone waits for the sender's file_done of transfer id.
func sentDone(t *testing.T, cl *ct.Client, id string) map[string]any {
	t.Helper()
	return ct.TransferOf(cl.WaitFile(fileWait, "", id))
}

// recipients are the per-recipient states of an outgoing transfer.
func recipients(tr map[string]any) []map[string]any {
	var out []map[string]any
	list, _ := tr["recipients"].([]any)
	for _, r := range list {
		m, _ := r.(map[string]any)
		out = append(out, m)
	}
	return out
}

func num(m map[string]any, k string) int64 {
	f, _ := m[k].(float64)
	return int64(f)
}

// sendAndCheck sends a file from a to b and checks what b saved.
func sendAndCheck(t *testing.T, a, b *ct.Client, to, path, sum string) (outgoing map[string]any) {
	t.Helper()
	r := a.Do("Send_file " + path + " " + to)
	id := r.S("id")
	if id == "" || !strings.HasPrefix(r.S("text"), "Sending "+filepath.Base(path)) {
		t.Fatalf("Send_file answered %v", r)
	}
	saved := received(t, b, filepath.Base(path))
	if got := fileSHA(t, saved); got != sum {
		t.Fatalf("%s arrived with SHA-256 %s, want %s", saved, got, sum)
	}
	return sentDone(t, a, id)
}

// A 50 MB file between two clients of one machine goes directly, whole.
func TestFileDirect(t *testing.T) {
	c := sharedCluster(t)
	a, b := account(t, c, "fia", "901"), account(t, c, "fib", "902")
	path, sum := randomFile(t, "payload.bin", 50<<20)
	out := sendAndCheck(t, a, b, "fib902", path, sum)
	if rs := recipients(out); len(rs) != 1 || rs[0]["via"] != "direct" || num(rs[0], "stored") != 50<<20 {
		t.Fatalf("the sender reports %v", rs)
	}
	// The history shows the file on both sides.
	if h := b.Do("History fia901").S("text"); !strings.Contains(h, "payload.bin (52.4 MB)") {
		t.Fatalf("history: %q", h)
	}
	// Both list it, done.
	if tr := a.Do("Transfers"); !strings.Contains(tr.S("text"), "done") {
		t.Fatalf("Transfers: %q", tr.S("text"))
	}
}

// relayPair starts two clients that publish only relay circuits, so
// everything between them goes through a coordinator's relay.
func relayPair(t *testing.T, c *ct.Cluster, a, b string) (*ct.Client, *ct.Client) {
	t.Helper()
	var out [2]*ct.Client
	for i, who := range []string{a, b} {
		name, roll := who[:3], who[3:]
		cl := c.StartClient(t, who, ct.ClientOptions{Args: []string{"-relay-only"}})
		cl.Do(fmt.Sprintf("Sign up %s %s password123", name, roll))
		cl.Do(fmt.Sprintf("Login %s password123", who))
		out[i] = cl
	}
	return out[0], out[1]
}

// The same file between two clients that are reachable only through the
// coordinators' relays.
func TestFileRelayed(t *testing.T) {
	c := sharedCluster(t)
	a, b := relayPair(t, c, "fra911", "frb912")
	path, sum := randomFile(t, "relayed.bin", 50<<20)
	out := sendAndCheck(t, a, b, "frb912", path, sum)
	if rs := recipients(out); rs[0]["via"] != "relay" {
		t.Fatalf("went %v, want relay", rs[0]["via"])
	}
}

// waitDone waits until cl has stored at least n bytes of the incoming file
// name.
func waitDone(t *testing.T, cl *ct.Client, name string, n int64) {
	t.Helper()
	cl.WaitFor(fileWait, fmt.Sprintf("%d bytes of %s", n, name), func(ls []ct.Line) bool {
		for _, l := range ls {
			if tr := transferOf(l); tr != nil && tr["name"] == name && num(tr, "done") >= n {
				return true
			}
		}
		return false
	})
}

// The coordinator whose relay carries a transfer is killed halfway: the
// file arrives whole through another relay, without starting again.
func TestFileRelayKilledMidTransfer(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	a, b := relayPair(t, c, "fka921", "fkb922")
	path, sum := randomFile(t, "relaykill.bin", 50<<20)
	id := a.Do("Send_file " + path + " fkb922").S("id")
	waitDone(t, b, "relaykill.bin", 15<<20)
	relays, err := c.LB().Relays(ctx(t), &api.RelaysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The relay the fetch went through is in the receiver's log.
	victim := ""
	for _, r := range relays.Relays {
		if strings.Contains(b.Log(), "relay="+r.PeerId) {
			victim = r.CoordinatorId
		}
	}
	if victim == "" {
		t.Fatalf("no coordinator's relay is named in the receiver's log:\n%s", ct.Tail(b.Log(), 20))
	}
	c.Signal(victim, syscall.SIGKILL)
	saved := received(t, b, "relaykill.bin")
	if got := fileSHA(t, saved); got != sum {
		t.Fatalf("arrived with SHA-256 %s, want %s", got, sum)
	}
	out := sentDone(t, a, id)
	rs := recipients(out)
	// Resumed, not restarted: what went twice is what was in flight.
	again := num(rs[0], "sent") - 50<<20
	t.Logf("killed %s's relay; %d bytes went twice", victim, again)
	if again > 4*wire.ChunkSize {
		t.Fatalf("%d bytes were sent again after the relay died", again)
	}
}

// The receiver is killed (kill -9) halfway and started again: it resumes
// from the last chunk it stored, and less than two chunks go twice.
func TestFileResumesAfterReceiverCrash(t *testing.T) {
	c := sharedCluster(t)
	a, b := account(t, c, "fca", "931"), account(t, c, "fcb", "932")
	path, sum := randomFile(t, "crash.bin", 50<<20)
	id := a.Do("Send_file " + path + " fcb932").S("id")
	waitDone(t, b, "crash.bin", 20<<20)
	b.Kill()
	b = c.StartClient(t, "fcb932-again", ct.ClientOptions{Profile: b.Profile})
	b.Do("Login fcb932 password123")
	saved := received(t, b, "crash.bin")
	if got := fileSHA(t, saved); got != sum {
		t.Fatalf("arrived with SHA-256 %s, want %s", got, sum)
	}
	out := sentDone(t, a, id)
	rs := recipients(out)
	// Every chunk's frame carries its seal and framing besides the data.
	chunks := int64(wire.ChunkCount(50<<20, wire.ChunkSize))
	overhead := chunks * 128
	again := num(rs[0], "sent") - 50<<20 - overhead
	t.Logf("the receiver was killed after 20 MB; %d bytes went twice", again)
	if again >= 2*wire.ChunkSize {
		t.Fatalf("%d bytes were sent again after the crash (two chunks are %d)", again, 2*wire.ChunkSize)
	}
	// No partial file is left behind.
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(saved), ".e2em-*")); len(m) != 0 {
		t.Fatalf("partial files left: %v", m)
	}
}

// The sender is killed (kill -9) halfway and started again: the recipient
// fetches the rest once the sender is back, and the file arrives whole.
func TestFileResumesAfterSenderCrash(t *testing.T) {
	c := sharedCluster(t)
	a, b := account(t, c, "fsc", "936"), account(t, c, "fsd", "937")
	path, sum := randomFile(t, "sendercrash.bin", 30<<20)
	a.Do("Send_file " + path + " fsd937")
	waitDone(t, b, "sendercrash.bin", 10<<20)
	a.Kill()
	a = c.StartClient(t, "fsc936-again", ct.ClientOptions{Profile: a.Profile})
	a.Do("Login fsc936 password123")
	if got := fileSHA(t, received(t, b, "sendercrash.bin")); got != sum {
		t.Fatalf("arrived with SHA-256 %s, want %s", got, sum)
	}
	// The sender hears it arrived, after its restart.
	a.WaitEvent(fileWait, "file_done", nil)
}

// Files to someone offline: a small one through the mailbox (it arrives
// while the sender is offline too), a large one waits until both are
// online. The sender is told which.
func TestFileToOfflineRecipient(t *testing.T) {
	c := sharedCluster(t)
	a, b := account(t, c, "foa", "941"), account(t, c, "fob", "942")
	bProfile := b.Profile
	b.Quit()
	small, smallSum := randomFile(t, "small.bin", 3<<20)
	big, bigSum := randomFile(t, "big.bin", 40<<20)
	smallID := a.Do("Send_file " + small + " fob942").S("id")
	bigID := a.Do("Send_file " + big + " fob942").S("id")
	mailed := a.WaitEvent(fileWait, "file_waiting", map[string]string{"id": smallID})
	if !strings.Contains(mailed.S("text"), "waits in fob942's mailbox") {
		t.Fatalf("small file: %q", mailed.S("text"))
	}
	waits := a.WaitEvent(fileWait, "file_waiting", map[string]string{"id": bigID})
	if !strings.Contains(waits.S("text"), "too large for the mailbox") {
		t.Fatalf("big file: %q", waits.S("text"))
	}
	aProfile := a.Profile
	a.Quit()
	b = c.StartClient(t, "fob942-again", ct.ClientOptions{Profile: bProfile})
	b.Do("Login fob942 password123")
	if got := fileSHA(t, received(t, b, "small.bin")); got != smallSum {
		t.Fatalf("small.bin arrived with %s, want %s", got, smallSum)
	}
	// The sender comes back: the large file goes, and both are reported
	// sent (the small one's receipt waited in the sender's mailbox).
	a = c.StartClient(t, "foa941-again", ct.ClientOptions{Profile: aProfile})
	a.Do("Login foa941 password123")
	if got := fileSHA(t, received(t, b, "big.bin")); got != bigSum {
		t.Fatalf("big.bin arrived with %s, want %s", got, bigSum)
	}
	sentDone(t, a, smallID)
	sentDone(t, a, bigID)
}

// A file to two groups that share a member reaches every member exactly
// once, encrypted once.
func TestGroupFileReachesEachMemberOnce(t *testing.T) {
	c := sharedCluster(t)
	a := account(t, c, "fga", "951")
	b := account(t, c, "fgb", "952")
	d := account(t, c, "fgd", "953")
	a.Do("Create fclub951")
	a.Do("Create fteam951")
	b.Do("Join fclub951")
	b.Do("Join fteam951") // in both
	d.Do("Join fteam951")
	path, sum := randomFile(t, "minutes.pdf", 5<<20)
	r := a.Do("Send_group_File " + path + " 2 fclub951 fteam951")
	out := sentDone(t, a, r.S("id"))
	if rs := recipients(out); len(rs) != 2 {
		t.Fatalf("recipients: %v", rs)
	}
	for _, cl := range []*ct.Client{b, d} {
		if got := fileSHA(t, received(t, cl, "minutes.pdf")); got != sum {
			t.Fatalf("%s got %s", cl.Name, got)
		}
		if n := cl.Count("file_done", nil); n != 1 {
			t.Fatalf("%s saved %d files", cl.Name, n)
		}
		entries, _ := os.ReadDir(filepath.Join(cl.Profile, "downloads"))
		if len(entries) != 1 {
			t.Fatalf("%s's downloads hold %d files", cl.Name, len(entries))
		}
	}
	if done := b.WaitEvent(wait, "file_done", nil); done.S("group") != "fclub951" {
		t.Fatalf("the shared member's copy is labelled %q", done.S("group"))
	}
	// The sender's spool of sealed chunks is gone once everyone has it.
	if m, _ := filepath.Glob(filepath.Join(a.Profile, "spool", "*")); len(m) != 0 {
		t.Fatalf("spool left: %v", m)
	}
}

// Cancel stops a transfer on both sides and deletes the partial file.
func TestFileCancelStopsBothSides(t *testing.T) {
	c := sharedCluster(t)
	a, b := account(t, c, "fxa", "961"), account(t, c, "fxb", "962")
	path, _ := randomFile(t, "cancel.bin", 200<<20)
	id := a.Do("Send_file " + path + " fxb962").S("id")
	waitDone(t, b, "cancel.bin", 4<<20)
	if r := a.Do("Cancel " + id[:8]); !strings.HasPrefix(r.S("text"), "Cancelled cancel.bin") {
		t.Fatalf("Cancel answered %v", r)
	}
	a.WaitEvent(wait, "file_cancelled", map[string]string{"id": id})
	b.WaitEvent(wait, "file_cancelled", nil)
	ct.Eventually(t, wait, func() error {
		if m, _ := filepath.Glob(filepath.Join(b.Profile, "downloads", "*")); len(m) != 0 {
			return fmt.Errorf("left in downloads: %v", m)
		}
		if m, _ := filepath.Glob(filepath.Join(b.Profile, "downloads", ".e2em-*")); len(m) != 0 {
			return fmt.Errorf("partial left: %v", m)
		}
		return nil
	})
	if r := a.Try("Cancel " + id); r["ok"] == true || !strings.Contains(r.S("error"), "cancelled already") {
		t.Fatalf("a second Cancel: %v", r)
	}
}

// A client started with -relay-only beside an ordinary one: the ordinary
// one sends its candidates, the relay-only one neither sends its own nor
// dials, and every message goes through the relay.
func TestRelayOnlyRevealsNothingToAContact(t *testing.T) {
	c := sharedCluster(t)
	hidden := c.StartClient(t, "roa951", ct.ClientOptions{Args: []string{"-relay-only"}})
	hidden.Do("Sign up roa 951 password123")
	hidden.Do("Login roa951 password123")
	open := account(t, c, "rob", "952")
	for i := 0; i < 6; i++ {
		for _, way := range []struct {
			from, to *ct.Client
			login    string
		}{{open, hidden, "roa951"}, {hidden, open, "rob952"}} {
			if sent := way.from.Deliver(way.to, way.login, fmt.Sprintf("relayed %d", i)); sent.S("via") != "relay" {
				t.Fatalf("message %d went %q beside a relay-only client", i, sent.S("via"))
			}
		}
		time.Sleep(250 * time.Millisecond) // a person's pace: time for any direct attempt
	}
	if log := hidden.Log(); strings.Contains(log, "direct connection") {
		t.Fatalf("the relay-only client connected directly:\n%s", ct.Tail(log, 20))
	}
}
