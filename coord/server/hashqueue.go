package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// hashQueue runs password hashes (argon2id: ~19 MiB and tens of
// milliseconds of a core each) a core at a time, and lets a bounded number
// of sign-ups and log-ins wait for a core, in arrival order, no address
// holding more than a share of the places. One that finds the queue full
// is answered at once with ResourceExhausted and when to try again, well
// before a client's timeout, instead of waiting past it: a burst of
// log-ins (a class at nine, everyone after a cluster restart) drains at the
// cluster's hashing rate and nobody times out in the queue.
type hashQueue struct {
	cores chan struct{}

	mu         sync.Mutex
	waiting    int
	byAddr     map[string]int
	max        int // places in the queue
	maxPerAddr int

	cost atomic.Int64 // a hash's recent time, in nanoseconds (moving average)
}

// initialHashCost is a hash's time before any was measured.
const initialHashCost = 60 * time.Millisecond

func newHashQueue(cores, places int) *hashQueue {
	q := &hashQueue{cores: make(chan struct{}, cores), byAddr: map[string]int{}, max: places, maxPerAddr: max(1, places/4)}
	q.cost.Store(int64(initialHashCost))
	return q
}

// run runs f on a core for a caller at addr, waiting in the queue when
// every core is busy.
func (q *hashQueue) run(ctx context.Context, addr string, f func()) error {
	select {
	case q.cores <- struct{}{}:
	default:
		if err := q.wait(ctx, addr); err != nil {
			return err
		}
	}
	defer func() { <-q.cores }()
	start := time.Now()
	f()
	took := int64(time.Since(start))
	q.cost.Store((q.cost.Load()*7 + took) / 8)
	return nil
}

// wait takes a place in the queue and waits for a core.
func (q *hashQueue) wait(ctx context.Context, addr string) error {
	q.mu.Lock()
	if q.waiting >= q.max || q.byAddr[addr] >= q.maxPerAddr {
		ahead := q.waiting
		q.mu.Unlock()
		return q.busy(ahead)
	}
	q.waiting++
	q.byAddr[addr]++
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		q.waiting--
		if q.byAddr[addr]--; q.byAddr[addr] <= 0 {
			delete(q.byAddr, addr)
		}
		q.mu.Unlock()
	}()
	select {
	case q.cores <- struct{}{}:
		return nil
	case <-ctx.Done():
		return status.Error(codes.Unavailable, "the coordinator is busy; try again")
	}
}

// busy is the answer to one who finds no place: try again once the ones
// ahead have been hashed.
func (q *hashQueue) busy(ahead int) error {
	after := time.Duration(int64(ahead+1) * q.cost.Load() / int64(cap(q.cores)))
	st := status.New(codes.ResourceExhausted, "many people are logging in right now; trying again shortly")
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(after)}); err == nil {
		st = d
	}
	return st.Err()
}
