package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ct "github.com/e2em/e2em/internal/clustertest"
)

const wait = 30 * time.Second

// account signs a new client up and logs it in.
func account(t *testing.T, c *ct.Cluster, name, roll string) *ct.Client {
	t.Helper()
	cl := c.StartClient(t, name+roll, ct.ClientOptions{})
	r := cl.Do(fmt.Sprintf("Sign up %s %s password123", name, roll))
	if !strings.HasPrefix(r.S("text"), "Successfully SIGNED UP!") {
		t.Fatalf("sign up answered %q", r.S("text"))
	}
	if r := cl.Do(fmt.Sprintf("Login %s+%s password123", name, roll)); r.S("text") != "Successfully LOGGED IN!" {
		t.Fatalf("login answered %q", r.S("text"))
	}
	return cl
}

func TestDirectMessagesBothWays(t *testing.T) {
	c := sharedCluster(t)
	alice, bob := account(t, c, "ann", "701"), account(t, c, "ben", "702")
	if r := alice.Do("Send ben702 hello ben, how are you?"); r.S("text") != "Message Sent!" {
		t.Fatalf("send answered %q", r.S("text"))
	}
	bob.WaitEvent(wait, "message", map[string]string{"from": "ann701", "body": "hello ben, how are you?"})
	alice.WaitEvent(wait, "delivered", map[string]string{"to": "ben702"})
	sent := alice.WaitEvent(wait, "sent", map[string]string{"to": "ben702"})
	// The directory names only relay circuits: the first message may take
	// one, never the mailbox.
	if v := sent.S("via"); v != "direct" && v != "relay" {
		t.Fatalf("the first message between two clients online went %q", v)
	}
	// A burst arrives faster than one acknowledgement each could go back:
	// every message shows once and every one is acknowledged.
	var burst []string
	for i := 0; i < 100; i++ {
		burst = append(burst, fmt.Sprintf("Send ben702 burst %d", i))
	}
	alice.Type(burst...)
	alice.WaitCount(wait, 101, "result", map[string]string{"text": "Message Sent!"}) // with the greeting
	bob.WaitCount(wait, 101, "message", map[string]string{"from": "ann701"})
	alice.WaitCount(wait, 101, "delivered", map[string]string{"to": "ben702"})
	if n := bob.Count("message", map[string]string{"from": "ann701"}); n != 101 {
		t.Fatalf("bob shows %d messages from ann, want 101", n)
	}
	// From the addresses they sent each other over that first session,
	// two clients on one machine go direct.
	sendUntil(t, alice, bob, "ben702", 10*time.Second, func(l ct.Line) bool { return l.S("via") == "direct" })
	// Answer by username alone: it names one account.
	bob.Do("Send ann fine, thanks")
	alice.WaitEvent(wait, "message", map[string]string{"from": "ben702", "body": "fine, thanks"})
	h := alice.Do("History ben702 200")
	if !strings.Contains(h.S("text"), "hello ben, how are you? [delivered]") || !strings.Contains(h.S("text"), "ben702 : fine, thanks") {
		t.Fatalf("history:\n%s", h.S("text"))
	}
	if r := bob.Do("Search how ARE"); !strings.Contains(r.S("text"), "hello ben") {
		t.Fatalf("search: %q", r.S("text"))
	}
	v1, v2 := alice.Do("Verify ben702").S("text"), bob.Do("Verify ann701").S("text")
	n1, n2 := v1[strings.Index(v1, ": ")+2:], v2[strings.Index(v2, ": ")+2:]
	if n1 != n2 || len(strings.ReplaceAll(n1, " ", "")) != 60 {
		t.Fatalf("safety numbers differ: %q vs %q", n1, n2)
	}
}

func TestOfflineRecipientGetsMailAtLogin(t *testing.T) {
	c := sharedCluster(t)
	alice := account(t, c, "cat", "711")
	bob := account(t, c, "dan", "712")
	bobProfile := bob.Profile
	bob.Quit()
	alice.Do("Send dan712 first while you were away")
	alice.Do("Send dan712 second while you were away")
	alice.WaitCount(wait, 2, "sent", map[string]string{"via": "mailbox"})
	bob = c.StartClient(t, "dan712-again", ct.ClientOptions{Profile: bobProfile})
	bob.Do("Login dan712 password123")
	bob.WaitFor(wait, "both messages in order", func(ls []ct.Line) bool {
		var bodies []string
		for _, l := range ls {
			if l.S("type") == "message" {
				bodies = append(bodies, l.S("body"))
			}
		}
		return len(bodies) == 2 && bodies[0] == "first while you were away" && bodies[1] == "second while you were away"
	})
	alice.WaitCount(wait, 2, "delivered", map[string]string{"to": "dan712"})
}

// Send_group to two groups that share members reaches each member once.
func TestSendGroupReachesEachMemberOnce(t *testing.T) {
	c := sharedCluster(t)
	alice := account(t, c, "eve", "721")
	b := account(t, c, "fay", "722")
	d := account(t, c, "gus", "723")
	alice.Do("Create club721")
	alice.Do("Create team721")
	b.Do("Join club721")
	b.Do("Join team721") // in both
	d.Do("Join team721")
	if r := alice.Do("Send_group 2 club721 team721 meeting at noon"); !strings.HasPrefix(r.S("text"), "Message Sent!") {
		t.Fatalf("Send_group answered %q", r.S("text"))
	}
	alice.WaitFor(wait, "receipts from both members", func(ls []ct.Line) bool {
		got := map[string]bool{}
		for _, l := range ls {
			if l.S("type") == "delivered" {
				got[l.S("to")] = true
			}
		}
		return got["fay722"] && got["gus723"]
	})
	b.WaitEvent(wait, "message", map[string]string{"from": "eve721", "group": "club721", "body": "meeting at noon"})
	d.WaitEvent(wait, "message", map[string]string{"from": "eve721", "group": "team721", "body": "meeting at noon"})
	for _, cl := range []*ct.Client{b, d} {
		if n := cl.Count("message", map[string]string{"body": "meeting at noon"}); n != 1 {
			t.Fatalf("%s got the group message %d times", cl.Name, n)
		}
	}
	// The sender is not among the recipients, and the group list counts.
	if n := alice.Count("message", map[string]string{"body": "meeting at noon"}); n != 0 {
		t.Fatalf("the sender received her own message %d times", n)
	}
	if r := alice.Do("List"); !strings.Contains(r.S("text"), "team721 : 3") {
		t.Fatalf("List: %q", r.S("text"))
	}
}

// The sender is killed with messages written to the recipient but not
// acknowledged (the recipient's machine is frozen); at its next start and
// log-in the queue goes out again, and the recipient shows every message
// exactly once although it receives most of them twice.
func TestQueueSurvivesSenderCrash(t *testing.T) {
	c := sharedCluster(t)
	alice := account(t, c, "hal", "731")
	bob := account(t, c, "ida", "732")
	profile := alice.Profile
	// Warmed up until the two talk directly (the first messages may take
	// a relay: the directory names only circuits).
	sendUntil(t, alice, bob, "ida732", 10*time.Second, func(l ct.Line) bool { return l.S("via") == "direct" })
	bob.Signal(syscall.SIGSTOP)
	const n = 20
	var ids []string
	for i := 0; i < n; i++ {
		ids = append(ids, alice.Do(fmt.Sprintf("Send ida732 queued %02d", i)).S("id"))
	}
	alice.WaitCount(wait, n+1, "sent", map[string]string{"via": "direct"}) // with the last warm-up
	alice.Kill()
	before := alice
	bob.Signal(syscall.SIGCONT)
	alice = c.StartClient(t, "hal731-again", ct.ClientOptions{Profile: profile})
	alice.Do("Login hal731 password123")
	// Every message is acknowledged: the first few perhaps before the
	// crash (a stop signal takes a moment to land), the rest after.
	alice.WaitFor(wait, "every message delivered", func(ls []ct.Line) bool {
		for _, id := range ids {
			match := map[string]string{"id": id}
			if before.Count("delivered", match)+ct.Count(ls, "delivered", match) == 0 {
				return false
			}
		}
		return true
	})
	// Every message shows once, whatever was resent.
	hist := bob.Do("History hal731 100").S("text")
	for i := 0; i < n; i++ {
		want := fmt.Sprintf("queued %02d", i)
		if k := strings.Count(hist, want); k != 1 {
			t.Fatalf("%q shows %d times in:\n%s", want, k, hist)
		}
		if k := bob.Count("message", map[string]string{"body": want}); k != 1 {
			t.Fatalf("%q shown %d times", want, k)
		}
	}
}

func TestClearErrors(t *testing.T) {
	c := sharedCluster(t)
	cl := c.StartClient(t, "errs", ct.ClientOptions{})
	cases := []struct{ line, want string }{
		{"Send bob hi", "not logged in"},
		{"Frobnicate", "unknown command"},
		{"Send_group two g hi", "usage: Send_group"},
		{"Login nobody99 password123", "wrong login id or password"},
	}
	for _, k := range cases {
		if r := cl.Try(k.line); r["ok"] == true || !strings.Contains(r.S("error"), k.want) {
			t.Fatalf("%q: want an error with %q, got %v", k.line, k.want, r)
		}
	}
	cl.Do("Sign up jim 741 password123")
	account(t, c, "kay", "741") // the same roll number
	cl.Do("Login jim741 password123")
	for _, k := range []struct{ line, want string }{
		{"Send 741 hi", "names 2 accounts: jim741, kay741"},
		{"Send nobody-at-all hi", "no account is called"},
		{"Send jim741 hi", "that is you"},
		{"Join no-such-group", "there is no group"},
	} {
		if r := cl.Try(k.line); r["ok"] == true || !strings.Contains(r.S("error"), k.want) {
			t.Fatalf("%q: want an error with %q, got %v", k.line, k.want, r)
		}
	}
	dead := c.StartClient(t, "nowhere", ct.ClientOptions{Args: []string{"-lb", "127.0.0.1:1"}})
	if r := dead.Try("Login jim741 password123"); !strings.Contains(r.S("error"), "unreachable") {
		t.Fatalf("unreachable cluster: %v", r)
	}
	other := c.StartClient(t, "errs-2", ct.ClientOptions{Profile: cl.Profile})
	other.WaitFor(wait, "a refusal to share the profile", func(ls []ct.Line) bool {
		for _, l := range ls {
			if strings.Contains(l.S("error"), "open in another e2em process") {
				return true
			}
		}
		return false
	})
}

// A contact's key changes (they start over with a new profile): the change
// is reported, messages to them wait, and go once the key is trusted.
func TestChangedKeyHoldsMessagesUntilTrusted(t *testing.T) {
	c := sharedCluster(t)
	alice := account(t, c, "lia", "751")
	bob := account(t, c, "max", "752")
	alice.Deliver(bob, "max752", "before the change")
	bob.Kill()
	// Bob on a new machine: a new profile, so new identity keys.
	bob = c.StartClient(t, "max752-new", ct.ClientOptions{})
	bob.Do("Login max752 password123")
	alice.Do("Send max752 are you still you?")
	alice.WaitEvent(wait, "key_changed", map[string]string{"contact": "max752"})
	if r := alice.Do("Verify max752"); !strings.Contains(r.S("text"), "NEW key") {
		t.Fatalf("Verify should show the new key's number: %q", r.S("text"))
	}
	if n := bob.Count("message", map[string]string{"body": "are you still you?"}); n != 0 {
		t.Fatal("a message went to a changed key before it was trusted")
	}
	// Trust takes the number the person compared, and no other.
	if r := alice.Try("Trust max752 12345 12345 12345 12345 12345 12345 12345 12345 12345 12345 12345 12345"); r["ok"] == true {
		t.Fatal("Trust accepted a safety number that is not the new key's")
	}
	alice.Do("Trust max752 " + safetyDigits(t, alice.Do("Verify max752").S("text")))
	bob.WaitEvent(wait, "message", map[string]string{"from": "lia751", "body": "are you still you?"})
	if r := alice.Try("Trust max752 " + safetyDigits(t, alice.Do("Verify max752").S("text"))); r["ok"] == true {
		t.Fatal("trusting an unchanged key should say there is nothing to trust")
	}
}

// Two people write to a third while the third writes back, all at once:
// every message is accepted and shows exactly once (each arrival and each
// send is a profile write; a badger conflict between them used to refuse
// one).
func TestEveryoneWritesAtOnce(t *testing.T) {
	c := sharedCluster(t)
	amy, bea, cal := account(t, c, "amy", "791"), account(t, c, "bea", "792"), account(t, c, "cal", "793")
	for _, cl := range []*ct.Client{amy, cal} { // pin keys, open sessions
		cl.Deliver(bea, "bea792", "hi from "+cl.Name)
	}
	bea.Deliver(amy, "amy791", "hi amy")
	const n = 25
	type send struct {
		from *ct.Client
		to   string
	}
	var wg sync.WaitGroup
	refused := make(chan string, 3*n)
	for _, s := range []send{{amy, "bea792"}, {cal, "bea792"}, {bea, "amy791"}} {
		wg.Add(1)
		go func(s send) {
			defer wg.Done()
			for i := 0; i < n; i++ {
				if r := s.from.Try(fmt.Sprintf("Send %s burst %s %02d", s.to, s.from.Name, i)); r["ok"] != true {
					refused <- fmt.Sprintf("%s: %s", s.from.Name, r.S("error"))
				}
			}
		}(s)
	}
	wg.Wait()
	close(refused)
	for r := range refused {
		t.Fatalf("a send was refused: %s", r)
	}
	for _, want := range []struct {
		to   *ct.Client
		from string
	}{{bea, "amy791"}, {bea, "cal793"}, {amy, "bea792"}} {
		want.to.WaitCount(wait, n+1, "message", map[string]string{"from": want.from}) // and the greeting
	}
	// Exactly once each.
	for _, cl := range []*ct.Client{amy, bea} {
		seen := map[string]int{}
		for _, l := range cl.Lines() {
			if l.S("type") == "message" && strings.HasPrefix(l.S("body"), "burst ") {
				seen[l.S("body")]++
			}
		}
		for body, k := range seen {
			if k != 1 {
				t.Fatalf("%s showed %q %d times", cl.Name, body, k)
			}
		}
	}
}

// A contact whose key changed holds back only their own mail: what others
// sent meanwhile arrives, and theirs once the key is trusted (issue 12,
// point 8; the mailbox used to stop at the first such envelope).
func TestChangedKeyDoesNotStallTheMailbox(t *testing.T) {
	c := sharedCluster(t)
	alice, bob, carol := account(t, c, "mba", "761"), account(t, c, "mbb", "762"), account(t, c, "mbc", "763")
	carol.Deliver(bob, "mbb762", "hello from my old phone")
	bobProfile := bob.Profile
	bob.Quit()
	carol.Kill()
	carol = c.StartClient(t, "mbc763-new", ct.ClientOptions{}) // a new device: new keys
	carol.Do("Login mbc763 password123")
	carol.Do("Send mbb762 hello from my new phone")
	carol.WaitEvent(wait, "sent", map[string]string{"via": "mailbox"})
	alice.Do("Send mbb762 unrelated news")
	alice.WaitEvent(wait, "sent", map[string]string{"via": "mailbox"})

	bob = c.StartClient(t, "mbb762-again", ct.ClientOptions{Profile: bobProfile})
	bob.Do("Login mbb762 password123")
	bob.WaitEvent(wait, "message", map[string]string{"from": "mba761", "body": "unrelated news"})
	bob.WaitEvent(wait, "key_changed", map[string]string{"contact": "mbc763"})
	if n := bob.Count("message", map[string]string{"from": "mbc763"}); n != 0 {
		t.Fatal("a message under an untrusted new key was shown")
	}
	bob.Do("Trust mbc763 " + safetyDigits(t, bob.Do("Verify mbc763").S("text")))
	bob.WaitEvent(wait, "message", map[string]string{"from": "mbc763", "body": "hello from my new phone"})
}

// safetyDigits is the safety number in a Verify answer.
func safetyDigits(t *testing.T, text string) string {
	t.Helper()
	n := regexp.MustCompile(`\d{5}( \d{5}){11}`).FindString(text)
	if n == "" {
		t.Fatalf("no safety number in %q", text)
	}
	return n
}
