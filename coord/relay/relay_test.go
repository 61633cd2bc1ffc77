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
