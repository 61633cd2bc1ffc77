package proxy

import (
	"net/netip"
	"sync"

	"golang.org/x/time/rate"
)

// sources counts open and new connections per client address, so that one
// host cannot take every connection the balancer has.
type sources struct {
	maxOpen int64   // open connections per address (0: no limit)
	perSec  float64 // new connections per second per address (0: no limit)
	burst   int

	mu    sync.Mutex
	addrs map[netip.Addr]*source
}

type source struct {
	open int64
	new  *rate.Limiter
}

func newSources(maxOpen int64, perSec float64, burst int) *sources {
	return &sources{maxOpen: maxOpen, perSec: perSec, burst: burst, addrs: map[netip.Addr]*source{}}
}

// admit reserves a connection for addr, or says no (and reserves nothing).
func (s *sources) admit(addr netip.Addr) bool {
	if s.maxOpen == 0 && s.perSec == 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src := s.addrs[addr]
	if src == nil {
		src = &source{}
		if s.perSec > 0 {
			src.new = rate.NewLimiter(rate.Limit(s.perSec), max(s.burst, 1))
		}
		s.addrs[addr] = src
	}
	if s.maxOpen > 0 && src.open >= s.maxOpen {
		return false
	}
	if src.new != nil && !src.new.Allow() {
		return false
	}
	src.open++
	return true
}

// release gives back addr's connection. An address with nothing open and a
// full bucket is forgotten, so the map holds only addresses in use.
func (s *sources) release(addr netip.Addr) {
	if s.maxOpen == 0 && s.perSec == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src := s.addrs[addr]
	if src == nil {
		return
	}
	src.open--
	if src.open <= 0 && (src.new == nil || src.new.Tokens() >= float64(s.burst)) {
		delete(s.addrs, addr)
	}
}
