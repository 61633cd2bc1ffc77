package main

import "testing"

// The limit is whichever runs out first: -max-conns, or descriptors at two
// per client connection.
func TestCapacityIsWhicheverRunsOutFirst(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     capacity
		limit int64
		used  float64
	}{
		{"max-conns first", capacity{open: 100, maxConns: 1000, fdsOpen: 220, fdsMax: 1 << 20}, 1000, 0.1},
		{"descriptors first", capacity{open: 400, maxConns: 20000, fdsOpen: 820, fdsMax: 1024}, 502, 400.0 / 502},
		{"no descriptors left", capacity{open: 500, maxConns: 20000, fdsOpen: 1030, fdsMax: 1024}, 500, 1},
		{"nothing bounds it", capacity{open: 3}, -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.c.limit(); got != tc.limit {
				t.Fatalf("limit %d, want %d", got, tc.limit)
			}
			if got := tc.c.used(); got != tc.used {
				t.Fatalf("used %v, want %v", got, tc.used)
			}
		})
	}
}
