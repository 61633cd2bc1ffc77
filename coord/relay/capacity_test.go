package relay

import "testing"

// Reservations are sized from memory (a quarter of it at
// ReservationMemory each) and descriptors (half of them), whichever runs
// out first, within the floor and the ceiling.
func TestReservationsAreSizedFromMemoryAndDescriptors(t *testing.T) {
	const many = 1 << 40
	for _, c := range []struct {
		memory, fds uint64
		want        int
	}{
		{0, many, minReservations},
		{128 << 20, many, minReservations}, // 128 MiB: 512 by memory, the floor is 1,024
		{4 << 30, many, (4 << 30) / relayShare / ReservationMemory},
		{24 << 30, many, (24 << 30) / relayShare / ReservationMemory},
		{24 << 30, 20000, 10000}, // descriptors first
		{many, many, maxReservations},
	} {
		if got := ReservationsFor(c.memory, c.fds); got != c.want {
			t.Errorf("%d bytes, %d descriptors: %d reservations, want %d", c.memory, c.fds, got, c.want)
		}
	}
	if MemoryLimit() == 0 || FileLimit() == 0 {
		t.Error("this machine's memory or descriptor limit could not be read")
	}
}
