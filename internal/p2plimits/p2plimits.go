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
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	basicconnmgr "github.com/libp2p/go-libp2p/p2p/net/connmgr"
	circuit "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/x/rate"
)

// Relay sizes a circuit relay v2 service's own scope: how many relayed
// connections it carries at once, and the memory each reserves (the relay
// reserves two copy buffers per circuit).
type Relay struct {
	Circuits         int
	MemoryPerCircuit int64
}

// atLeast raises a limit to n, leaving a larger or unlimited one alone.
func atLeast[V rcmgr.LimitVal | rcmgr.LimitVal64, N int | int64](v V, n N) V {
	if v == V(rcmgr.Unlimited) || int64(v) >= int64(n) {
		return v
	}
	return V(n)
}

// New returns a resource manager and a connection manager for a host that
// keeps up to peers connections from others, up to perIP of them from one
// address. Every limit not named here keeps libp2p's scaled default.
func New(peers, perIP int) (network.ResourceManager, connmgr.ConnManager, error) {
	return build(limits(peers, nil), perIP)
}

// NewForRelay is New for a host that also runs the relay service r sizes
// (r.Circuits 0: libp2p's memory-scaled size).
// Its resource manager reports what it admits and refuses to libp2p's
// libp2p_rcmgr_* metrics (registered by libp2p.PrometheusRegisterer), so an
// operator sees a relay reaching its limits.
func NewForRelay(peers, perIP int, r Relay) (network.ResourceManager, connmgr.ConnManager, error) {
	stats, err := rcmgr.NewStatsTraceReporter()
	if err != nil {
		return nil, nil, fmt.Errorf("libp2p resource manager metrics: %w", err)
	}
	return build(limits(peers, &r), perIP, rcmgr.WithTraceReporter(stats))
}

func build(l rcmgr.ConcreteLimitConfig, perIP int, extra ...rcmgr.Option) (network.ResourceManager, connmgr.ConnManager, error) {
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(l), append([]rcmgr.Option{
		rcmgr.WithLimitPerSubnet(
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: perIP}},
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: perIP}, {PrefixLength: 48, ConnCount: 8 * perIP}},
		),
		rcmgr.WithConnRateLimiters(rateLimiter(perIP))}, extra...)...)
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
//
// With r (and r.Circuits > 0), it also raises the relay service's streams
// and memory to carry r.Circuits at once: libp2p scales them with the machine's memory (1,009
// streams and 63 MiB on a 24 GiB machine: about 500 circuits with 64 KiB
// buffers, a quarter of that on a 2 GiB VM).
func limits(peers int, r *Relay) rcmgr.ConcreteLimitConfig {
	base := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&base)
	auto := base.AutoScale()
	def := auto.ToPartialLimitConfig()
	inbound := peers + peers/4
	partial := rcmgr.PartialLimitConfig{
		System: rcmgr.ResourceLimits{
			ConnsInbound: atLeast(def.System.ConnsInbound, inbound),
			Conns:        atLeast(def.System.Conns, inbound+int(def.System.ConnsOutbound)),
			FD:           atLeast(def.System.FD, inbound+int(def.System.ConnsOutbound)),
		},
		Transient: rcmgr.ResourceLimits{
			ConnsInbound: atLeast(def.Transient.ConnsInbound, peers/4),
			Conns:        atLeast(def.Transient.Conns, peers/4+int(def.Transient.ConnsOutbound)),
		},
	}
	if r != nil && r.Circuits > 0 {
		// A circuit is a hop stream in (from its source) and a stop
		// stream out (to its destination); reservations being made are
		// hop streams too, briefly.
		in, out := r.Circuits+peers/4, r.Circuits
		memory := int64(r.Circuits) * r.MemoryPerCircuit
		svc := def.Service[relayv2.ServiceName]
		partial.Service = map[string]rcmgr.ResourceLimits{relayv2.ServiceName: {
			StreamsInbound:  atLeast(svc.StreamsInbound, in),
			StreamsOutbound: atLeast(svc.StreamsOutbound, out),
			Streams:         atLeast(svc.Streams, in+out),
			Memory:          atLeast(svc.Memory, memory),
		}}
		hop, stop := def.Protocol[circuit.ProtoIDv2Hop], def.Protocol[circuit.ProtoIDv2Stop]
		partial.Protocol = map[protocol.ID]rcmgr.ResourceLimits{
			circuit.ProtoIDv2Hop:  {StreamsInbound: atLeast(hop.StreamsInbound, in), Streams: atLeast(hop.Streams, in+int(hop.StreamsOutbound))},
			circuit.ProtoIDv2Stop: {StreamsOutbound: atLeast(stop.StreamsOutbound, out), Streams: atLeast(stop.Streams, out+int(stop.StreamsInbound))},
		}
		partial.System.Streams = atLeast(def.System.Streams, in+out+int(def.System.Streams))
		partial.System.Memory = atLeast(def.System.Memory, memory+int64(def.System.Memory))
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
