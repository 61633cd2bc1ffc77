package main

import (
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// capacity is how many client connections the balancer can still take: the
// lesser of -max-conns and what its file descriptors allow (each client
// connection holds two, its own and the backend's). It is what an operator
// watches to add a balancer before this one refuses people.
type capacity struct {
	open     int64 // client connections now
	maxConns int64 // -max-conns (0: none)
	fdsOpen  int64 // descriptors in use now
	fdsMax   int64 // RLIMIT_NOFILE
}

// limit is the number of client connections at which the balancer stops
// taking more: open plus what is left.
func (c capacity) limit() int64 {
	lim := int64(-1)
	if c.fdsMax > 0 {
		lim = c.open + max(0, c.fdsMax-c.fdsOpen)/2
	}
	if c.maxConns > 0 && (lim < 0 || c.maxConns < lim) {
		lim = c.maxConns
	}
	return lim
}

// used is open / limit (0 when nothing bounds it).
func (c capacity) used() float64 {
	lim := c.limit()
	if lim <= 0 {
		return 0
	}
	return float64(c.open) / float64(lim)
}

// currentCapacity reads the process's descriptors and limit.
func currentCapacity(open, maxConns int64) capacity {
	c := capacity{open: open, maxConns: maxConns}
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		c.fdsMax = int64(rl.Cur)
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		c.fdsOpen = int64(len(fds))
	}
	return c
}

// capacityWarning is the share of capacity above which the balancer warns.
const capacityWarning = 0.8

// warnNearCapacity logs, every interval while above capacityWarning, how
// close the balancer is to refusing connections.
func warnNearCapacity(stop <-chan struct{}, interval time.Duration, read func() capacity, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if c := read(); c.used() >= capacityWarning {
				log.Warn("near capacity: add a balancer or raise the limits", "open", c.open, "limit", c.limit(),
					"max_conns", c.maxConns, "fds_open", c.fdsOpen, "fds_max", c.fdsMax)
			}
		}
	}
}
