package p2p

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// punchLog is a fake DCUtR: it records punches and answers as told.
type punchLog struct {
	mu      sync.Mutex
	punched []peer.ID
	result  func(peer.ID) error
	done    chan peer.ID
}

func (l *punchLog) punch(p peer.ID) error {
	l.mu.Lock()
	l.punched = append(l.punched, p)
	l.mu.Unlock()
	defer func() { l.done <- p }()
	return l.result(p)
}

func (l *punchLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.punched)
}

// waitPunches waits for n punches to finish.
func (l *punchLog) waitPunches(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-l.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d hole punches", i, n)
		}
	}
}

// Each relayed connection is punched again punchRetry after it opened, not
// up to twice that (issue 13, point 3), and then every punchRetry.
func TestHolePunchIsTimedFromTheRelayedConnection(t *testing.T) {
	log := &punchLog{result: func(peer.ID) error { return errors.New("still behind the NAT") }, done: make(chan peer.ID, 16)}
	start := time.Unix(1_700_000_000, 0)
	relayed := map[peer.ID]time.Time{"alice": start, "bob": start.Add(7 * time.Second)}
	var mu sync.Mutex
	ready := false
	stopped := false
	hp := newHolePuncher(log.punch, func() bool { mu.Lock(); defer mu.Unlock(); return ready },
		func() map[peer.ID]time.Time { return relayed }, func(peer.ID) bool { return false },
		func() error { stopped = true; return nil }, nil)
	tick := make(chan time.Time)
	go hp.run(tick)

	tick <- start.Add(11 * time.Second) // no public address yet: nothing
	mu.Lock()
	ready = true
	mu.Unlock()
	tick <- start.Add(12 * time.Second) // alice's is 12 s old: punch; bob's 5 s: wait
	log.waitPunches(t, 1)
	tick <- start.Add(17 * time.Second) // bob's is 10 s old
	log.waitPunches(t, 1)
	tick <- start.Add(18 * time.Second) // nobody is due
	tick <- start.Add(22 * time.Second) // alice again, 10 s after her last try
	log.waitPunches(t, 1)
	if err := hp.Close(); err != nil || !stopped {
		t.Fatalf("close: %v, service stopped %v", err, stopped)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if want := []peer.ID{"alice", "bob", "alice"}; len(log.punched) != 3 || log.punched[0] != want[0] || log.punched[1] != want[1] || log.punched[2] != want[2] {
		t.Fatalf("punches %v, want %v", log.punched, want)
	}
}

// A punch that reports success but leaves no direct connection is tried
// again at once, a bounded number of times (issue 13, point 3), and TryNow
// punches without waiting for the peer's time.
func TestSuccessfulPunchWithoutADirectConnectionIsTriedAgain(t *testing.T) {
	log := &punchLog{result: func(peer.ID) error { return nil }, done: make(chan peer.ID, 16)}
	start := time.Unix(1_700_000_000, 0)
	hp := newHolePuncher(log.punch, func() bool { return true },
		func() map[peer.ID]time.Time { return map[peer.ID]time.Time{"carol": start} },
		func(peer.ID) bool { return false }, func() error { return nil }, nil)
	tick := make(chan time.Time)
	go hp.run(tick)
	tick <- start.Add(10 * time.Second)
	log.waitPunches(t, 1+punchAgain)
	deadline := time.Now().Add(5 * time.Second)
	for { // the attempt ends after its last punch
		hp.mu.Lock()
		busy := hp.running["carol"]
		hp.mu.Unlock()
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the attempt did not end")
		}
		time.Sleep(time.Millisecond)
	}
	hp.TryNow("carol") // as after libp2p's own punch "succeeded": no waiting for the timer
	log.waitPunches(t, 1+punchAgain)
	hp.Close()
	if n := log.count(); n != 2*(1+punchAgain) {
		t.Fatalf("%d punches, want %d", n, 2*(1+punchAgain))
	}
}
