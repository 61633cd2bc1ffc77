package store

import (
	"fmt"
	"sync"
	"testing"
)

// Messages sent and received at the same moment (each receiving session
// stores on its own goroutine) are all stored, each once, in one order.
func TestConcurrentWritesAllLand(t *testing.T) {
	s := open(t)
	const writers, each = 4, 100
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := fmt.Sprintf("%d-%d", g, i)
				var err error
				if g%2 == 0 {
					err = s.AddOutgoing(&Message{ID: id, Peer: "bob102", Outgoing: true}, &Outgoing{ID: id, To: "bob102"})
				} else {
					_, err = s.AddMessage(&Message{ID: id, Peer: "bob102"})
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	h, err := s.History("@bob102", 2*writers*each)
	if err != nil || len(h) != writers*each {
		t.Fatalf("%d of %d stored: %v", len(h), writers*each, err)
	}
	seen := map[uint64]bool{}
	for _, m := range h {
		if seen[m.StoredSeq] {
			t.Fatalf("sequence number %d given twice", m.StoredSeq)
		}
		seen[m.StoredSeq] = true
	}
	if q, _ := s.Queue(); len(q) != writers/2*each {
		t.Fatalf("queue holds %d of %d", len(q), writers/2*each)
	}
}

// The same message arriving on two sessions at once (directly and through
// a relay) is stored once.
func TestSameMessageTwiceAtOnceStoredOnce(t *testing.T) {
	s := open(t)
	for i := 0; i < 50; i++ {
		id := fmt.Sprintf("dup-%d", i)
		var wg sync.WaitGroup
		var mu sync.Mutex
		added := 0
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok, err := s.AddMessage(&Message{ID: id, Peer: "bob102"})
				if err != nil {
					t.Error(err)
				}
				if ok {
					mu.Lock()
					added++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if added != 1 {
			t.Fatalf("%s stored %d times", id, added)
		}
	}
}
