package p2p

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	ct "github.com/e2em/e2em/internal/clustertest"
)

func randomPeer(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// People spread evenly over the relays (each holds about want/n of them),
// the choice is the same every time, and a relay's loss moves only the
// people who had it: everyone else keeps both their relays.
func TestRelayChoiceSpreadsAndMovesOnlyTheLostShare(t *testing.T) {
	const people, want = 3000, 2
	relays := make([]peer.AddrInfo, 4)
	for i := range relays {
		relays[i] = peer.AddrInfo{ID: randomPeer(t)}
	}
	held := map[peer.ID]int{}
	moved := 0
	for i := 0; i < people; i++ {
		self := randomPeer(t)
		first := RankRelays(self, relays)[:want]
		again := RankRelays(self, []peer.AddrInfo{relays[3], relays[1], relays[0], relays[2]})[:want]
		for j := range first {
			held[first[j].ID]++
			if again[j].ID != first[j].ID {
				t.Fatalf("the choice depends on the list's order: %v then %v", first, again)
			}
		}
		// relays[0] dies.
		after := RankRelays(self, relays[1:])[:want]
		lost := first[0].ID == relays[0].ID || first[1].ID == relays[0].ID
		kept := 0
		for _, a := range after {
			for _, f := range first {
				if a.ID == f.ID {
					kept++
				}
			}
		}
		switch {
		case lost && kept != want-1:
			t.Fatalf("someone who lost one relay changed %d others", want-1-kept)
		case !lost && kept != want:
			t.Fatal("someone the dead relay did not hold was moved")
		case lost:
			moved++
		}
	}
	for _, r := range relays {
		share := float64(held[r.ID]) / people
		if share < 0.45 || share > 0.55 { // want/n = 0.5
			t.Fatalf("relay %s holds %.2f of the people, want about 0.5", r.ID, share)
		}
	}
	if share := float64(moved) / people; share < 0.45 || share > 0.55 {
		t.Fatalf("%.2f of the people moved when one relay of 4 died, want about its share, 0.5", share)
	}
}

// A client holds reservations on its first two relays of three; when one
// of them goes away for good it reserves on the third within seconds, and
// its circuits name no dead relay.
func TestRelaysMoveToTheNextChoiceWhenOneDies(t *testing.T) {
	me := newNode(t, "ann101")
	var relays []peer.AddrInfo
	hosts := map[peer.ID]host.Host{}
	for i := 0; i < 3; i++ {
		relay := loopbackHost(t, libp2p.EnableRelayService(), libp2p.ForceReachabilityPublic())
		relays = append(relays, peer.AddrInfo{ID: relay.ID(), Addrs: relay.Addrs()})
		hosts[relay.ID()] = relay
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := NewRelays(ctx, me.h, relays, 2, nil)
	held := func() map[peer.ID]bool {
		out := map[peer.ID]bool{}
		for _, a := range r.CircuitAddrs() {
			if id, err := peer.Decode(RelayOf(a)); err == nil {
				out[id] = true
			}
		}
		return out
	}
	ranked := RankRelays(me.h.ID(), relays)
	ct.Eventually(t, 20*time.Second, func() error {
		if h := held(); len(h) != 2 || !h[ranked[0].ID] || !h[ranked[1].ID] {
			return fmt.Errorf("holds %v, want the first two choices", h)
		}
		return nil
	})
	hosts[ranked[0].ID].Close()
	ct.Eventually(t, 10*time.Second, func() error {
		if h := held(); len(h) != 2 || h[ranked[0].ID] || !h[ranked[2].ID] {
			return fmt.Errorf("holds %v after the first choice died", h)
		}
		return nil
	})
}

// An unreachable relay rests 1 s, then 2, 4 … up to 30 s, each within
// ±25 %: a crowd whose relays all restarted is back within seconds, not
// all at one instant.
func TestUnreachableRelayRestsLongerEachTime(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var r relayRest
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second} {
		r = r.rested(now)
		if got := r.until.Sub(now); got < want*3/4 || got > want*5/4 {
			t.Fatalf("rests %v, want %v ± 25 %%", got, want)
		}
	}
}
