// Package balance owns the balancer's view of its backends: the set of
// backends (changed by flags, the config file and the admin API), their
// health (active checks, passive failure marking, slow start) and the
// choice of a backend for each new connection (round robin, least
// connections, power of two choices).
package balance

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Policy names how a backend is picked.
type Policy string

// The policies a Pool knows.
const (
	RoundRobin       Policy = "roundrobin"
	LeastConnections Policy = "leastconn"
	PowerOfTwo       Policy = "p2c"
)

// ParsePolicy accepts a policy name.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case RoundRobin, LeastConnections, PowerOfTwo:
		return p, nil
	}
	return "", fmt.Errorf("unknown policy %q (want roundrobin, leastconn or p2c)", s)
}

// Backend is one upstream server and its counters.
type Backend struct {
	Addr string

	Active   atomic.Int64  // open proxied connections
	Total    atomic.Uint64 // proxied connections ever
	BytesIn  atomic.Uint64 // client → backend
	BytesOut atomic.Uint64 // backend → client
	Failures atomic.Uint64 // failed dials and health checks

	healthy      atomic.Bool
	healthySince atomic.Int64 // unix nano; drives slow start
	okStreak     atomic.Int32
	failStreak   atomic.Int32
	removed      atomic.Bool
}

// Healthy reports whether the backend takes new connections.
func (b *Backend) Healthy() bool { return b.healthy.Load() && !b.removed.Load() }

// Removed reports whether the backend was taken out of the pool; its open
// connections drain.
func (b *Backend) Removed() bool { return b.removed.Load() }

// Options tune a Pool.
type Options struct {
	Policy Policy
	// SlowStart is how long a backend that just became healthy takes to
	// ramp from a tenth of its share of new connections to all of it.
	SlowStart time.Duration
	// Rise and Fall are how many consecutive good or bad checks change a
	// backend's health. A failed dial counts as a bad check.
	Rise, Fall int
	// MaxConnsPerBackend caps open connections to one backend (0: none).
	MaxConnsPerBackend int64
	// StartHealthy treats new backends as healthy before their first check.
	StartHealthy bool
	Now          func() time.Time
}

// Pool is the set of backends and the picking policy.
type Pool struct {
	opts     Options
	mu       sync.RWMutex
	backends []*Backend
	next     atomic.Uint64
	panics   atomic.Uint64
	onChange func(b *Backend, added bool)
}

// NewPool makes an empty pool.
func NewPool(opts Options) *Pool {
	if opts.Policy == "" {
		opts.Policy = RoundRobin
	}
	if opts.Rise <= 0 {
		opts.Rise = 1
	}
	if opts.Fall <= 0 {
		opts.Fall = 1
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Pool{opts: opts}
}

// OnChange registers a function told about every backend added or removed
// (the health checker follows the pool this way).
func (p *Pool) OnChange(f func(b *Backend, added bool)) {
	p.mu.Lock()
	p.onChange = f
	p.mu.Unlock()
}

// Add puts a backend in the pool; adding one already there does nothing.
func (p *Pool) Add(addr string) (*Backend, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends {
		if b.Addr == addr {
			return b, false
		}
	}
	b := &Backend{Addr: addr}
	if p.opts.StartHealthy {
		b.healthy.Store(true)
		b.healthySince.Store(0)
	}
	p.backends = append(p.backends, b)
	if p.onChange != nil {
		p.onChange(b, true)
	}
	return b, true
}

// Remove takes a backend out: it gets no new connections; open ones finish.
func (p *Pool) Remove(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.IndexFunc(p.backends, func(b *Backend) bool { return b.Addr == addr })
	if i < 0 {
		return false
	}
	b := p.backends[i]
	b.removed.Store(true)
	p.backends = slices.Delete(p.backends, i, i+1)
	if p.onChange != nil {
		p.onChange(b, false)
	}
	return true
}

// Set makes the pool hold exactly addrs (for a reload), keeping the state
// of backends that stay.
func (p *Pool) Set(addrs []string) (added, removed []string) {
	want := map[string]bool{}
	for _, a := range addrs {
		want[a] = true
	}
	for _, b := range p.Backends() {
		if !want[b.Addr] {
			p.Remove(b.Addr)
			removed = append(removed, b.Addr)
		}
	}
	for _, a := range addrs {
		if _, isNew := p.Add(a); isNew {
			added = append(added, a)
		}
	}
	return added, removed
}

// Backends is a snapshot of the pool.
func (p *Pool) Backends() []*Backend {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.backends)
}

// ErrNoBackend is returned when no healthy backend can take a connection.
var ErrNoBackend = errors.New("no healthy backend")

// Pick chooses a backend for a new connection, skipping those in tried.
func (p *Pool) Pick(tried []*Backend) (*Backend, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	now := p.opts.Now()
	// A backend takes the connection if it was not tried yet, has room,
	// and (unless in panic mode) passes its checks.
	pick := func(needHealthy bool) []*Backend {
		cands := make([]*Backend, 0, len(p.backends))
		for _, b := range p.backends {
			if !b.Removed() && (b.Healthy() || !needHealthy) && !slices.Contains(tried, b) &&
				(p.opts.MaxConnsPerBackend <= 0 || b.Active.Load() < p.opts.MaxConnsPerBackend) {
				cands = append(cands, b)
			}
		}
		return cands
	}
	cands := pick(true)
	if len(cands) == 0 && !p.anyHealthy() {
		// Panic mode (as Envoy's panic threshold): when every backend
		// fails its checks at once, the likeliest cause is load — a
		// reconnect storm slowing the checks past their timeout — not
		// every server dying together. Refusing everyone would turn that
		// slowness into an outage, so connections go to any backend not
		// removed; a dead one fails its dial and the next is tried.
		if cands = pick(false); len(cands) > 0 {
			p.panics.Add(1)
		}
	}
	if len(cands) == 0 {
		return nil, ErrNoBackend
	}
	switch p.opts.Policy {
	case LeastConnections:
		return p.leastLoaded(cands, now), nil
	case PowerOfTwo:
		if len(cands) == 1 {
			return cands[0], nil
		}
		i := rand.IntN(len(cands))
		j := rand.IntN(len(cands) - 1)
		if j >= i {
			j++
		}
		return p.leastLoaded([]*Backend{cands[i], cands[j]}, now), nil
	default:
		return p.roundRobin(cands, now), nil
	}
}

// anyHealthy says whether some backend passes its checks (p.mu held).
func (p *Pool) anyHealthy() bool {
	for _, b := range p.backends {
		if b.Healthy() {
			return true
		}
	}
	return false
}

// Panics is how many connections were sent on in panic mode (no backend
// healthy).
func (p *Pool) Panics() uint64 { return p.panics.Load() }

// roundRobin walks the candidates in turn; a backend in slow start is
// skipped with probability 1 - weight, so it gets its weight's share.
func (p *Pool) roundRobin(cands []*Backend, now time.Time) *Backend {
	start := p.next.Add(1) - 1
	for i := range cands {
		b := cands[(start+uint64(i))%uint64(len(cands))]
		if w := p.weight(b, now); w >= 1 || rand.Float64() < w {
			return b
		}
	}
	return cands[start%uint64(len(cands))]
}

// leastLoaded picks the candidate with the fewest open connections per unit
// of weight; ties go to the earliest.
func (p *Pool) leastLoaded(cands []*Backend, now time.Time) *Backend {
	best, bestLoad := cands[0], -1.0
	for _, b := range cands {
		load := float64(b.Active.Load()+1) / p.weight(b, now)
		if bestLoad < 0 || load < bestLoad {
			best, bestLoad = b, load
		}
	}
	return best
}

// weight is 1 for a settled backend and ramps from 0.1 to 1 during slow
// start.
func (p *Pool) weight(b *Backend, now time.Time) float64 {
	since := b.healthySince.Load()
	if p.opts.SlowStart <= 0 || since == 0 {
		return 1
	}
	elapsed := now.Sub(time.Unix(0, since))
	if elapsed >= p.opts.SlowStart {
		return 1
	}
	return 0.1 + 0.9*float64(elapsed)/float64(p.opts.SlowStart)
}

// ReportSuccess records a good health check.
func (p *Pool) ReportSuccess(b *Backend) {
	b.failStreak.Store(0)
	if b.healthy.Load() {
		return
	}
	if int(b.okStreak.Add(1)) >= p.opts.Rise {
		b.okStreak.Store(0)
		b.healthySince.Store(p.opts.Now().UnixNano())
		b.healthy.Store(true)
	}
}

// ReportFailure records a failed health check or dial; it returns true if
// this failure took the backend out.
func (p *Pool) ReportFailure(b *Backend) bool {
	b.Failures.Add(1)
	b.okStreak.Store(0)
	if int(b.failStreak.Add(1)) >= p.opts.Fall && b.healthy.Load() {
		b.healthy.Store(false)
		return true
	}
	return false
}
