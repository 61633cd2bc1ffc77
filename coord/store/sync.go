package store

import (
	"context"
	"sync"
)

// indexWaiter lets callers wait until the applied index reaches a value.
type indexWaiter struct {
	mu  sync.Mutex
	idx uint64
	ch  chan struct{}
}

// Set raises the index (it never goes down) and wakes every waiter.
func (w *indexWaiter) Set(idx uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if idx <= w.idx {
		return
	}
	w.idx = idx
	if w.ch != nil {
		close(w.ch)
		w.ch = nil
	}
}

// Index is the current value.
func (w *indexWaiter) Index() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.idx
}

// Wait returns when the index is at least idx, or with ctx's error.
func (w *indexWaiter) Wait(ctx context.Context, idx uint64) error {
	for {
		w.mu.Lock()
		if w.idx >= idx {
			w.mu.Unlock()
			return nil
		}
		if w.ch == nil {
			w.ch = make(chan struct{})
		}
		ch := w.ch
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// coalescer shares one run among every caller that arrives before the run
// starts, so a burst of reads costs one leadership check, not one each. A
// caller never joins a run that had already started when it arrived.
type coalescer struct {
	run      func(context.Context) (uint64, error)
	mu       sync.Mutex
	next     *round
	inflight bool
}

type round struct {
	done chan struct{}
	idx  uint64
	err  error
}

// Do waits for the next run to finish and returns its result.
func (c *coalescer) Do(ctx context.Context) (uint64, error) {
	c.mu.Lock()
	if c.next == nil {
		c.next = &round{done: make(chan struct{})}
	}
	r := c.next
	if !c.inflight {
		c.startLocked()
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r.idx, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (c *coalescer) startLocked() {
	r := c.next
	c.next = nil
	c.inflight = true
	go func() {
		// The run must not die with the first caller's context.
		ctx, cancel := context.WithTimeout(context.Background(), readRoundTimeout)
		r.idx, r.err = c.run(ctx)
		cancel()
		close(r.done)
		c.mu.Lock()
		c.inflight = false
		if c.next != nil {
			c.startLocked()
		}
		c.mu.Unlock()
	}()
}
