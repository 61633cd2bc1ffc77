// Package p2plimits owns how many libp2p connections an e2em host admits.
// libp2p's resource manager and connection manager are sized for a peer in
// a swarm, with limits that scale with the machine's memory; a coordinator
// holding a relay reservation for each person online, and a client in a
// class-sized group, need more, and people behind one NAT share one
// address. Both the coordinators (coord/relay) and the clients
// (desktop/engine/p2p) build their hosts' managers here.
package p2plimits

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/network"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	basicconnmgr "github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/x/rate"
)

// New returns a resource manager and a connection manager for a host that
// keeps up to peers connections from others, up to perIP of them from one
// address. Every limit not named here keeps libp2p's scaled default.
func New(peers, perIP int) (network.ResourceManager, connmgr.ConnManager, error) {
	l := limits(peers)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(l),
		rcmgr.WithLimitPerSubnet(
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: perIP}},
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: perIP}, {PrefixLength: 48, ConnCount: 8 * perIP}},
		),
		rcmgr.WithConnRateLimiters(rateLimiter(perIP)))
	if err != nil {
		return nil, nil, fmt.Errorf("libp2p resource manager: %w", err)
	}
	low, high := watermarks(l)
	cm, err := basicconnmgr.NewConnManager(low, high)
	if err != nil {
		rm.Close()
		return nil, nil, fmt.Errorf("libp2p connection manager: %w", err)
	}
	return rm, cm, nil
}

// limits raises the inbound, handshake and descriptor limits to fit peers
// (+25 %). libp2p's defaults on a 24 GiB machine allow 252 inbound
// connections in all and 79 in their handshake at once (half that on an
// 8 GiB laptop): a coordinator could not hold more than about 250 people
// (TestRelayHoldsHundredsOfReservations: 252 of 400 got a reservation).
func limits(peers int) rcmgr.ConcreteLimitConfig {
	base := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&base)
	auto := base.AutoScale()
	def := auto.ToPartialLimitConfig()
	raise := func(v rcmgr.LimitVal, to int) rcmgr.LimitVal {
		if v == rcmgr.Unlimited || int(v) >= to {
			return v
		}
		return rcmgr.LimitVal(to)
	}
	inbound := peers + peers/4
	partial := rcmgr.PartialLimitConfig{
		System: rcmgr.ResourceLimits{
			ConnsInbound: raise(def.System.ConnsInbound, inbound),
			Conns:        raise(def.System.Conns, inbound+int(def.System.ConnsOutbound)),
			FD:           raise(def.System.FD, inbound+int(def.System.ConnsOutbound)),
		},
		Transient: rcmgr.ResourceLimits{
			ConnsInbound: raise(def.Transient.ConnsInbound, peers/4),
			Conns:        raise(def.Transient.Conns, peers/4+int(def.Transient.ConnsOutbound)),
		},
	}
	return partial.Build(auto)
}

// watermarks keeps the connection manager from closing what the resource
// manager admitted: by default it trims above 192 connections, and a relay
// reservation or a message session is only a tag to it.
func watermarks(l rcmgr.ConcreteLimitConfig) (low, high int) {
	high = int(l.ToPartialLimitConfig().System.Conns)
	if high <= 0 { // unlimited
		high = 1 << 20
	}
	return high * 9 / 10, high
}

// rateLimiter bounds how fast new connections may arrive from one address,
// in proportion to how many it may hold. libp2p's default allows 16 at
// once and then one every 5 s per IPv4 address: the seventeenth person
// behind a shared NAT (a campus, an office) who logged in within a minute
// of the others could not reach a coordinator's relay
// (BenchmarkHolePunchRate). Here a quarter of perIP may arrive at once,
// refilled so that all of them can within a minute. Loopback is free.
func rateLimiter(perIP int) *rate.Limiter {
	l := rate.Limit{RPS: float64(perIP) / 60, Burst: max(16, perIP/4)}
	wide := rate.Limit{RPS: 8 * l.RPS, Burst: 8 * l.Burst}
	return &rate.Limiter{
		NetworkPrefixLimits: []rate.PrefixLimit{
			{Prefix: netip.MustParsePrefix("127.0.0.0/8")}, // zero: no limit
			{Prefix: netip.MustParsePrefix("::1/128")},
		},
		SubnetRateLimiter: rate.SubnetLimiter{
			IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: l}},
			IPv6SubnetLimits: []rate.SubnetLimit{{PrefixLength: 56, Limit: l}, {PrefixLength: 48, Limit: wide}},
			GracePeriod:      time.Minute,
		},
	}
}
