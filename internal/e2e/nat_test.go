package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/p2p"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// natPair starts a cluster in the lab's internet and a signed-in client
// behind each NAT.
func natPair(t *testing.T, lab *ct.NATLab) (*ct.Cluster, *ct.Client, *ct.Client) {
	c := ct.Start(t, ct.Options{N: 3, Netns: lab.Internet, Host: lab.Host})
	var clients [2]*ct.Client
	for i, name := range []string{"nia", "oto"} {
		roll := fmt.Sprint(800 + i)
		cl := c.StartClient(t, name+roll, ct.ClientOptions{Wrap: ct.Wrap(lab.Clients[i]), Args: []string{"-port", fmt.Sprint(4001 + i)}})
		cl.Do(fmt.Sprintf("Sign up %s %s password123", name, roll))
		cl.Do(fmt.Sprintf("Login %s%s password123", name, roll))
		clients[i] = cl
	}
	return c, clients[0], clients[1]
}

// sendUntil sends numbered messages from a to b until the way the last one
// left satisfies ok, or fails after d. It returns that "sent" event.
func sendUntil(t *testing.T, a, b *ct.Client, to string, d time.Duration, ok func(ct.Line) bool) ct.Line {
	t.Helper()
	deadline := time.Now().Add(d)
	for i := 0; ; i++ {
		sent := a.Deliver(b, to, fmt.Sprintf("ping %d-%d", time.Now().UnixNano(), i))
		if ok(sent) {
			return sent
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d messages in %v, still %v", i+1, d, sent)
		}
		// The pace of a person typing; hole punching runs meanwhile.
		time.Sleep(500 * time.Millisecond)
	}
}

// (a) NATs that keep the port and drop unsolicited packets: the first
// message goes through a relay, hole punching (DCUtR) then connects the
// two directly, and later messages are not relayed.
func TestNATHolePunchingConnectsDirectly(t *testing.T) {
	lab := ct.NewNATLab(t, "e2a", ct.PortKeeping)
	_, a, b := natPair(t, lab)
	sendUntil(t, a, b, "oto801", 60*time.Second, func(l ct.Line) bool { return l.S("via") == "direct" })
	// The relayed connection is let go (it held a circuit on a
	// coordinator), and the two go on talking directly.
	ct.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(a.Log()+b.Log(), "relayed connection closed: a direct one is open") {
			return fmt.Errorf("neither client closed its relayed connection")
		}
		return nil
	})
	if sent := a.Deliver(b, "oto801", "still direct after the relay is gone"); sent.S("via") != "direct" {
		t.Fatalf("after the relayed connection closed, a message went %q", sent.S("via"))
	}
	// A file goes the same way, whole.
	path, sum := randomFile(t, "punched.bin", 10<<20)
	out := sendAndCheck(t, a, b, "oto801", path, sum)
	if rs := recipients(out); rs[0]["via"] != "direct" {
		t.Fatalf("a file between port-keeping NATs went %v", rs[0]["via"])
	}
}

// (a, continued) The first hole punch fails — the two homes cannot reach
// each other for a while, the relay still carries the messages — and libp2p
// never punches again for that connection. The client tries again, so
// once the path is back the two connect directly.
func TestNATHolePunchIsTriedAgainAfterAnOutage(t *testing.T) {
	lab := ct.NewNATLab(t, "e2d", ct.PortKeeping)
	lab.Partition(t, true)
	_, a, b := natPair(t, lab)
	sendUntil(t, a, b, "oto801", 10*time.Second, func(l ct.Line) bool { return l.S("via") == "relay" })
	// The outage outlasts libp2p's own attempt for the relayed connection
	// (a direct dial and three punches, 5 s each at most), so that only
	// trying again can bring the two together.
	time.Sleep(25 * time.Second)
	lab.Partition(t, false)
	sendUntil(t, a, b, "oto801", 60*time.Second, func(l ct.Line) bool { return l.S("via") == "direct" })
}

// (b) NATs with a random port per destination: no hole punch can guess
// it, so the messages go through a coordinator's relay.
func TestNATRandomPortsUseTheRelay(t *testing.T) {
	lab := ct.NewNATLab(t, "e2b", ct.RandomPort)
	_, a, b := natPair(t, lab)
	for i := 0; i < 3; i++ {
		sent := sendUntil(t, a, b, "oto801", 10*time.Second, func(ct.Line) bool { return true })
		if sent.S("via") != "relay" {
			t.Fatalf("message %d went %q, want relay", i, sent.S("via"))
		}
	}
	// A file too: no hole punch can reach the other side.
	path, sum := randomFile(t, "natrelay.bin", 10<<20)
	out := sendAndCheck(t, a, b, "oto801", path, sum)
	if rs := recipients(out); rs[0]["via"] != "relay" {
		t.Fatalf("a file between random-port NATs went %v", rs[0]["via"])
	}
}

// (c) The relaying coordinator is killed mid-conversation: delivery goes
// on through a relay, every message arriving.
func TestNATRelayKilledMidConversation(t *testing.T) {
	lab := ct.NewNATLab(t, "e2c", ct.RandomPort)
	c, a, b := natPair(t, lab)
	first := sendUntil(t, a, b, "oto801", 10*time.Second, func(l ct.Line) bool { return l.S("via") == "relay" })
	relays, err := c.LB().Relays(ctx(t), &api.RelaysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	victim := ""
	for _, r := range relays.Relays {
		if r.PeerId == first.S("relay") {
			victim = r.CoordinatorId
		}
	}
	if victim == "" {
		t.Fatalf("relay %s is no coordinator", first.S("relay"))
	}
	c.Signal(victim, syscall.SIGKILL)
	// Delivery goes on through a relay: another coordinator's, or the
	// same one once bootstrap has restarted it (it keeps its peer id, and
	// each client's choice of relays is stable).
	sendUntil(t, a, b, "oto801", 20*time.Second, func(l ct.Line) bool { return l.S("via") == "relay" })
}

// (d) Two people behind one NAT: the directory holds only relay circuits
// (no LAN, loopback or public address of anyone), and the two still go
// direct, over their LAN, from the addresses they sent each other end to
// end through the relay.
func TestNATSharedGoesDirectWithoutAddressesInTheDirectory(t *testing.T) {
	lab := ct.NewNATLab(t, "e2s", ct.SharedNAT)
	c, a, b := natPair(t, lab)
	sendUntil(t, a, b, "oto801", 20*time.Second, func(l ct.Line) bool { return l.S("via") == "direct" })
	authed := logIn(t, c.LB(), signUp(t, c.LB(), "dirk", "802", "password123"), "password123")
	for _, login := range []string{"nia800", "oto801"} {
		look, err := c.LB().LookUp(authed, &api.LookUpRequest{Query: login})
		if err != nil {
			t.Fatal(err)
		}
		if len(look.Matches) != 1 {
			t.Fatalf("%s: %d matches", login, len(look.Matches))
		}
		k := look.Matches[0]
		if len(k.Addrs) != 0 {
			t.Fatalf("the directory holds direct addresses of %s: %v", login, k.Addrs)
		}
		if len(k.RelayAddrs) == 0 {
			t.Fatalf("the directory holds no relay circuit of %s", login)
		}
		for _, r := range k.RelayAddrs {
			if !strings.Contains(r, "/p2p-circuit") || strings.Contains(r, "10.1.0.") {
				t.Fatalf("the directory's address for %s is no relay circuit: %s", login, r)
			}
		}
	}
}

// (e) A port-keeping NAT and a random-port NAT: DCUtR cannot aim at the
// random side, but probing finds its mapping and the two go direct.
func TestNATOneRandomPortGoesDirect(t *testing.T) {
	lab := ct.NewNATLab(t, "e2o", ct.OneRandomPort)
	_, a, b := natPair(t, lab)
	sendUntil(t, a, b, "oto801", 30*time.Second, func(l ct.Line) bool { return l.S("via") == "direct" })
	if !strings.Contains(a.Log()+b.Log(), "found this random-port NAT's mapping") {
		t.Fatalf("direct without probing the random-port NAT:\n%s\n%s", ct.Tail(a.Log(), 30), ct.Tail(b.Log(), 30))
	}
}

// (f) NATs that answer unsolicited TCP with a RST: TCP's simultaneous open
// breaks, QUIC's punch does not.
func TestNATAnsweringWithRSTGoesDirect(t *testing.T) {
	lab := ct.NewNATLab(t, "e2r", ct.RSTAnswering)
	_, a, b := natPair(t, lab)
	sendUntil(t, a, b, "oto801", 30*time.Second, func(l ct.Line) bool { return l.S("via") == "direct" })
}

// relaysIn are the distinct relays a directory entry's circuits go through.
func relaysIn(k *api.Keys) map[string]bool {
	out := map[string]bool{}
	for _, a := range k.RelayAddrs {
		if r := p2p.RelayOf(a); r != "" {
			out[r] = true
		}
	}
	return out
}

// A client reserves on two of the three relays, not all; when one of them
// dies it reserves again within seconds (on the third, or on the same one
// once bootstrap has restarted it), its entry names two relays, and it
// stays reachable through them. (Moving to the next choice while the dead
// one stays away: TestRelaysMoveToTheNextChoiceWhenOneDies.)
func TestClientMovesToAnotherRelayWhenOneDies(t *testing.T) {
	c := ct.Start(t, ct.Options{N: 3})
	p := c.StartClient(t, "mov961", ct.ClientOptions{Args: []string{"-relay-only"}})
	p.Do("Sign up mov 961 password123")
	p.Do("Login mov961 password123")
	login, err := c.LB().LogIn(ctx(t), &api.LogInRequest{LoginId: signUp(t, c.LB(), "mow", "962", "password123"), Password: "password123"})
	if err != nil {
		t.Fatal(err)
	}
	entry := func() (map[string]bool, error) {
		look, err := c.LB().LookUp(api.WithToken(ctx(t), login.Token), &api.LookUpRequest{Query: "mov961"})
		if err != nil {
			return nil, err
		}
		if len(look.Matches) != 1 {
			return nil, fmt.Errorf("%d matches", len(look.Matches))
		}
		return relaysIn(look.Matches[0]), nil
	}
	var before map[string]bool
	ct.Eventually(t, wait, func() (err error) {
		if before, err = entry(); err == nil && len(before) != 2 {
			err = fmt.Errorf("the entry names relays %v, want two", before)
		}
		return err
	})
	relays, err := c.LB().Relays(ctx(t), &api.RelaysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(relays.Relays) != 3 {
		t.Fatalf("%d relays, want 3", len(relays.Relays))
	}
	victim := ""
	for _, r := range relays.Relays {
		if before[r.PeerId] {
			victim = r.CoordinatorId
			break
		}
	}
	c.Signal(victim, syscall.SIGKILL)
	q := c.StartClient(t, "mox963", ct.ClientOptions{Args: []string{"-relay-only"}})
	q.Do("Sign up mox 963 password123")
	q.Do("Login mox963 password123")
	if sent := q.Deliver(p, "mov961", "still there?"); sent.S("via") != "relay" {
		t.Fatalf("went %v", sent)
	}
	ct.Eventually(t, 20*time.Second, func() error {
		now, err := entry()
		if err == nil && len(now) != 2 {
			err = fmt.Errorf("the entry names relays %v after %s died", now, victim)
		}
		return err
	})
}
