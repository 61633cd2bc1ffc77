package p2p

import (
	"sync"
	"unicode"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/wire"
)

// Inbound session limits: each peer may open helloBurst sessions at once,
// then one per helloEvery; all peers together helloTotal a second.
const (
	helloBurst     = 10
	helloEvery     = 2 // seconds
	helloTotal     = 50
	helloPeersKept = 4096
)

// helloLimiter decides which inbound Hellos are checked at all.
type helloLimiter struct {
	mu    sync.Mutex
	peers map[peer.ID]*rate.Limiter
	all   *rate.Limiter
}

func newHelloLimiter() *helloLimiter {
	return &helloLimiter{peers: map[peer.ID]*rate.Limiter{}, all: rate.NewLimiter(helloTotal, 2*helloTotal)}
}

func (l *helloLimiter) allow(p peer.ID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.peers[p]
	if !ok {
		if len(l.peers) >= helloPeersKept {
			clear(l.peers) // a flood of new peer ids still meets the total
		}
		lim = rate.NewLimiter(rate.Limit(1.0/helloEvery), helloBurst)
		l.peers[p] = lim
	}
	return lim.Allow() && l.all.Allow()
}

// helloProblem says why a session's first frame is not a Hello this side
// will check ("" when it is): the version, a From that could be a login
// id, and a To that is us.
func helloProblem(f *wire.Frame, self string) string {
	hello := f.GetHello()
	switch {
	case hello == nil || hello.Version != e2e.Version:
		return "unsupported protocol version"
	case !plausibleLogin(hello.From):
		return "that is not a login id"
	case hello.To != self:
		return "this is not the person you asked for"
	}
	return ""
}

// plausibleLogin says whether a Hello's From could be a login id at all:
// what a stranger writes there reaches the person's screen.
func plausibleLogin(s string) bool {
	if s == "" || len(s) > api.MaxLoginIDLen {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '/' {
			return false
		}
	}
	return true
}
