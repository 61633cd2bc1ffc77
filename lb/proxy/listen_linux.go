package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Listener is a listening TCP socket that the event loops accept on.
type Listener struct {
	fd    int
	addr  *net.TCPAddr
	once  sync.Once
	users atomic.Int32 // loops still watching it
}

// Listen opens a listener for clients. Accepted sockets inherit its
// TCP_NODELAY, so no system call per connection sets it. TCP keep-alive
// probes are off: the idle timeout ends dead connections.
func Listen(addr string) (*Listener, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	// No address or "::" listens on IPv6 and IPv4 alike, as Go's net does.
	dualStack := ta.IP == nil || ta.IP.IsUnspecified() && ta.IP.To4() == nil
	family, sa := unix.AF_INET, toSockaddr(ta)
	switch {
	case dualStack:
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: ta.Port}
	case ta.IP.To4() == nil:
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil && dualStack && errors.Is(err, unix.EAFNOSUPPORT) {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: ta.Port}
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	}
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	setup := func() error {
		if family == unix.AF_INET6 && dualStack {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
				return err
			}
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, sa); err != nil {
			return err
		}
		return unix.Listen(fd, 4096) // the kernel caps it at net.core.somaxconn
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Listener{fd: fd, addr: fromSockaddr(bound)}, nil
}

// Addr is where the listener listens.
func (l *Listener) Addr() net.Addr { return l.addr }

// Close stops listening; connections not yet accepted are refused.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() { err = unix.Close(l.fd) })
	return err
}

// accept4 accepts a connection as a non-blocking socket. It decodes the
// peer's address itself: unix.Accept4 asks the kernel for the listener's
// protocol on every call to tell TCP from SMC, one system call more per
// connection.
func accept4(lfd int) (int, unix.Sockaddr, error) {
	var rsa unix.RawSockaddrAny
	size := uint32(unix.SizeofSockaddrAny)
	r, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)),
		uintptr(unsafe.Pointer(&size)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, nil, errno
	}
	// The port is in network byte order.
	port := func(p *uint16) int { return int(binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(p))[:])) }
	switch rsa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		return int(r), &unix.SockaddrInet4{Port: port(&p.Port), Addr: p.Addr}, nil
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		return int(r), &unix.SockaddrInet6{Port: port(&p.Port), ZoneId: p.Scope_id, Addr: p.Addr}, nil
	}
	return int(r), &unix.SockaddrInet4{}, nil
}

func toSockaddr(a *net.TCPAddr) unix.Sockaddr {
	if ip4 := a.IP.To4(); ip4 != nil {
		return &unix.SockaddrInet4{Port: a.Port, Addr: [4]byte(ip4)}
	}
	sa := &unix.SockaddrInet6{Port: a.Port}
	if ip16 := a.IP.To16(); ip16 != nil {
		sa.Addr = [16]byte(ip16)
	}
	if a.Zone != "" {
		if ifi, err := net.InterfaceByName(a.Zone); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	return sa
}

// sourceOf is the address a client connects from (IPv4-mapped IPv6 as IPv4).
func sourceOf(sa unix.Sockaddr) netip.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr).Unmap()
	}
	return netip.Addr{}
}

func fromSockaddr(sa unix.Sockaddr) *net.TCPAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port}
	}
	return &net.TCPAddr{}
}
