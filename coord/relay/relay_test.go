package relay

import (
	"net/netip"
	"testing"
)

func TestPeopleBehindOneNATMayAllConnect(t *testing.T) {
	nat := netip.MustParseAddr("192.0.0.70")
	l := connRateLimiter(DefaultConfig().MaxConnsPerIP)
	for i := 0; i < 200; i++ {
		if !l.Allow(nat) {
			t.Fatalf("connection %d from one NAT address refused", i+1)
		}
	}
	// Still a limit: a flood from one address is cut.
	small := connRateLimiter(64)
	allowed := 0
	for i := 0; i < 1000 && small.Allow(nat); i++ {
		allowed++
	}
	if allowed >= 1000 || allowed < 16 {
		t.Fatalf("a flood of 1000 got %d through", allowed)
	}
	for i := 0; i < 1000; i++ {
		if !small.Allow(netip.MustParseAddr("127.0.0.1")) {
			t.Fatal("loopback is limited")
		}
	}
}

func TestLimitsHoldEveryReservation(t *testing.T) {
	cfg := DefaultConfig()
	l := resourceLimits(cfg).ToPartialLimitConfig()
	if in := int(l.System.ConnsInbound); in < cfg.MaxReservations {
		t.Fatalf("%d inbound connections for %d reservations", in, cfg.MaxReservations)
	}
	if int(l.System.FD) < int(l.System.ConnsInbound) {
		t.Fatalf("%d descriptors for %d connections", l.System.FD, l.System.ConnsInbound)
	}
	if int(l.Transient.ConnsInbound) < cfg.MaxReservations/4 {
		t.Fatalf("only %d people may be in their handshake at once", l.Transient.ConnsInbound)
	}
	low, high := connManagerWatermarks(resourceLimits(cfg))
	if low < cfg.MaxReservations || high < low {
		t.Fatalf("the connection manager trims from %d down to %d, below %d reservations", high, low, cfg.MaxReservations)
	}
	// Limits libp2p scales higher than ours stay as they are.
	small := cfg
	small.MaxReservations = 8
	if got, auto := int(resourceLimits(small).ToPartialLimitConfig().System.ConnsInbound), 64; got < auto {
		t.Fatalf("a small relay lowered libp2p's default to %d", got)
	}
}
