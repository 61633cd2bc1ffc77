package api

import (
	mrand "math/rand/v2"
	"time"
)

// Jitter is d times a random factor in [0.5, 1.5]: clients that were
// told the same wait, or that failed at the same instant (a coordinator
// or the whole cluster restarted under them), come back spread over a
// second's worth of d instead of all at once.
func Jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + mrand.N(d+1)
}

// Backoff is the wait between attempts to reach the cluster: it starts at
// Min, doubles after each failure up to Max, and each wait is jittered
// (see Jitter). The zero value waits Min (or nothing) every time.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

// Next is the wait before the next attempt, after one more failure.
func (b *Backoff) Next() time.Duration {
	d := max(b.next, b.Min)
	b.next = min(2*d, max(b.Max, b.Min))
	return Jitter(d)
}

// Reset starts the schedule over: the last attempt worked.
func (b *Backoff) Reset() { b.next = 0 }
