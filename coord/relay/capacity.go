package relay

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ReservationMemory is what one held reservation costs a relay: the
// client's libp2p connection (TCP, Noise, yamux), its identify and the
// reservation, measured live by BenchmarkManyOnline (docs/benchmarks.md,
// "Many online") and rounded up.
const ReservationMemory = 64 << 10

// relayShare is the part of the machine's memory the relay may plan for:
// the rest is the coordinator's state, its gRPC clients and the circuits'
// buffers (Circuits × 128 KiB, planned separately).
const relayShare = 4

// Reservation bounds whatever the memory: below, a small machine still
// takes a class; above, descriptors (one per reservation) run out first.
const (
	minReservations = 1024
	maxReservations = 1 << 18
)

// ReservationsFor is how many reservations fit in a quarter of memory
// bytes and half of fds descriptors (each is a connection; the other half
// is for the coordinator's gRPC clients, Raft and its files). A limit the
// machine cannot keep would fail people at accept time instead of telling
// them the relay is full.
func ReservationsFor(memory, fds uint64) int {
	n := min(memory/relayShare/ReservationMemory, fds/2)
	return int(min(max(n, minReservations), maxReservations))
}

// FileLimit is this process's descriptor limit (RLIMIT_NOFILE; Go raises
// the soft limit to the hard one at start), or 0 if unknown.
func FileLimit() uint64 {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) != nil {
		return 0
	}
	return rl.Cur
}

// MemoryLimit is the memory this process may use: its cgroup's limit
// (cgroup v2 memory.max, as a container sets it) when there is one, else
// the machine's RAM; 0 if neither can be read.
func MemoryLimit() uint64 {
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		return uint64(si.Totalram) * uint64(si.Unit)
	}
	return 0
}
