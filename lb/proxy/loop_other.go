//go:build !linux

package proxy

import (
	"errors"
	"net"
)

var errNeedsLinux = errors.New("the balancer moves bytes with epoll and runs on Linux only")

// Listener is a listening socket; see loop_linux.go.
type Listener struct{}

// Listen fails: the data path needs Linux.
func Listen(string) (*Listener, error) { return nil, errNeedsLinux }

// Addr is nil.
func (*Listener) Addr() net.Addr { return nil }

// Close does nothing.
func (*Listener) Close() error { return nil }

type loop struct{}

func startLoops(*Server, *Listener) ([]*loop, error) { return nil, errNeedsLinux }
func (*loop) run() error                             { return errNeedsLinux }
func (*loop) release()                               {}
func (*loop) wake()                                  {}
