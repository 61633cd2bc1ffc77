package p2p

import (
	"bufio"
	"bytes"
	"testing"
	"unicode"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// FuzzHello: whatever a stranger writes as the first frame of a session,
// reading and checking it does not panic, and what passes the check names
// us and a From that could be a login id (it reaches the screen).
func FuzzHello(f *testing.F) {
	seed := func(h *wire.Hello) {
		var b bytes.Buffer
		if err := wire.WriteFrame(&b, &wire.Frame{Kind: &wire.Frame_Hello{Hello: h}}); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	seed(&wire.Hello{Version: e2e.Version, From: "alice101", To: "bob102", Ephemeral: make([]byte, 32)})
	seed(&wire.Hello{Version: e2e.Version, From: "x\x1b[2J\n", To: "bob102"})
	seed(&wire.Hello{Version: 99, From: "alice101", To: "bob102"})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := wire.ReadFrame(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		if helloProblem(fr, "bob102") != "" {
			return
		}
		h := fr.GetHello()
		if h.To != "bob102" || h.From == "" || len(h.From) > api.MaxLoginIDLen {
			t.Fatalf("accepted %+v", h)
		}
		for _, r := range h.From {
			if !unicode.IsPrint(r) || unicode.IsSpace(r) {
				t.Fatalf("accepted a From with %q", r)
			}
		}
	})
}

// One peer gets a burst of Hellos checked, then is held back; another
// peer is not held back by it.
func TestHelloLimiterIsPerPeer(t *testing.T) {
	l := newHelloLimiter()
	a, b := peer.ID("peer-a"), peer.ID("peer-b")
	allowed := 0
	for range 3 * helloBurst {
		if l.allow(a) {
			allowed++
		}
	}
	if allowed != helloBurst {
		t.Fatalf("%d of a burst allowed, want %d", allowed, helloBurst)
	}
	if !l.allow(b) {
		t.Fatal("another peer was held back by the first one's burst")
	}
}
