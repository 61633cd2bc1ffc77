package p2p

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestHolePunchIsTriedAgainForPeersStillRelayed(t *testing.T) {
	var mu sync.Mutex
	var punched []peer.ID
	attempted := make(chan struct{}, 8)
	punch := func(p peer.ID) error {
		mu.Lock()
		punched = append(punched, p)
		mu.Unlock()
		attempted <- struct{}{}
		return errors.New("still behind the NAT")
	}
	var ready atomic.Bool
	asked := make(chan struct{}, 4)
	isReady := func() bool { r := ready.Load(); asked <- struct{}{}; return r }
	relayed := []peer.ID{"alice", "bob"}
	stopped := false
	hp := newHolePuncher(punch, isReady, func() []peer.ID { return relayed }, func() error { stopped = true; return nil }, nil)
	tick := make(chan time.Time)
	go hp.run(tick)

	tick <- time.Now() // no public address yet: nothing to try
	<-asked
	ready.Store(true)
	tick <- time.Now() // alice and bob
	<-asked
	for i := 0; i < 2; i++ {
		select {
		case <-attempted:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d hole punches after a tick, want 2", i)
		}
	}
	if err := hp.Close(); err != nil || !stopped {
		t.Fatalf("close: %v, service stopped %v", err, stopped)
	}
	if err := hp.Close(); err != nil { // twice is harmless
		t.Fatal(err)
	}
	select {
	case tick <- time.Now():
		t.Fatal("still ticking after Close")
	default:
	}
	mu.Lock()
	defer mu.Unlock()
	if len(punched) != 2 {
		t.Fatalf("hole punches %v, want alice and bob once", punched)
	}
}
