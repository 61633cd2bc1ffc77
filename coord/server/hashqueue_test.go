package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// With every core busy, callers wait in a bounded queue where one address
// holds at most a quarter of the places; the one who finds no place is told
// at once to come back after the ones ahead, and everyone who waited is
// hashed.
func TestHashQueueIsBoundedFairAndSaysWhenToComeBack(t *testing.T) {
	q := newHashQueue(1, 4) // one core, four places, one per address
	ctx := context.Background()
	release := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var done []string
	run := func(addr string) {
		defer wg.Done()
		if err := q.run(ctx, addr, func() {
			mu.Lock()
			done = append(done, addr)
			mu.Unlock()
		}); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		q.run(ctx, "busy", func() { <-release })
	}()
	ct.Eventually(t, 5*time.Second, func() error {
		if len(q.cores) != 1 {
			return fmt.Errorf("the core is not taken")
		}
		return nil
	})
	queued := func(n int) func() error {
		return func() error {
			q.mu.Lock()
			defer q.mu.Unlock()
			if q.waiting != n {
				return fmt.Errorf("%d waiting, want %d", q.waiting, n)
			}
			return nil
		}
	}
	for i, addr := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"} {
		wg.Add(1)
		go run(addr)
		ct.Eventually(t, 5*time.Second, queued(i+1))
		if i == 0 {
			// A second from one address finds its share taken.
			err := q.run(ctx, addr, func() { t.Error("hashed past the address's share") })
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("the address's second caller: %v", err)
			}
		}
	}
	err := q.run(ctx, "10.0.0.5", func() { t.Error("hashed past a full queue") })
	after, ok := api.RetryAfter(err)
	if status.Code(err) != codes.ResourceExhausted || !ok || after < 4*initialHashCost || after > 6*initialHashCost {
		t.Fatalf("a full queue answered %v (retry after %v, %v)", err, after, ok)
	}
	close(release)
	wg.Wait()
	if len(done) != 4 {
		t.Fatalf("hashed %v, want the four who waited", done)
	}
}
