package p2p

import (
	"context"
	"net"
	"sync"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/quic-go/quic-go"
	"go.uber.org/fx"
)

// UDPSockets are the UDP sockets QUIC runs on, opened through here so that
// hard-NAT probing can send its probes from QUIC's own socket (the one
// whose public port the other side knows) and hand a socket it found a
// path on to QUIC (see hardnat.go).
type UDPSockets struct {
	mu     sync.Mutex
	byPort map[int]net.PacketConn
	lent   map[int]net.PacketConn // found sockets QUIC is about to listen on
}

// NewUDPSockets makes an empty set.
func NewUDPSockets() *UDPSockets {
	return &UDPSockets{byPort: map[int]net.PacketConn{}, lent: map[int]net.PacketConn{}}
}

// listen is QUIC's way to open a socket: a lent one, else a new one.
func (u *UDPSockets) listen(network string, laddr *net.UDPAddr) (net.PacketConn, error) {
	u.mu.Lock()
	if c, ok := u.lent[laddr.Port]; ok && laddr.Port != 0 {
		delete(u.lent, laddr.Port)
		u.byPort[laddr.Port] = c
		u.mu.Unlock()
		return c, nil
	}
	u.mu.Unlock()
	c, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	u.byPort[c.LocalAddr().(*net.UDPAddr).Port] = c
	u.mu.Unlock()
	return c, nil
}

// Socket is QUIC's socket on port, if open.
func (u *UDPSockets) Socket(port int) net.PacketConn {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.byPort[port]
}

// lend makes c the socket QUIC gets when it next listens on c's port.
func (u *UDPSockets) lend(c *net.UDPConn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lent[c.LocalAddr().(*net.UDPAddr).Port] = c
}

// unlend takes back a socket QUIC did not take.
func (u *UDPSockets) unlend(port int) {
	u.mu.Lock()
	c := u.lent[port]
	delete(u.lent, port)
	u.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// forget drops a socket QUIC has closed.
func (u *UDPSockets) forget(port int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.byPort, port)
}

// quicReuse is libp2p's own QUIC connection manager set-up (resource
// manager scopes for accepted connections, source address checks) with
// the sockets opened through u.
func (u *UDPSockets) quicReuse() libp2p.Option {
	return libp2p.QUICReuse(func(key quic.StatelessResetKey, tokens quic.TokenGeneratorKey, rcmgr network.ResourceManager, lifecycle fx.Lifecycle) (*quicreuse.ConnManager, error) {
		cm, err := quicreuse.NewConnManager(key, tokens,
			quicreuse.OverrideListenUDP(u.listen),
			quicreuse.ConnContext(func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
				addr, err := quicreuse.ToQuicMultiaddr(info.RemoteAddr, quic.Version1)
				if err != nil {
					addr = nil
				}
				scope, err := rcmgr.OpenConnection(network.DirInbound, false, addr)
				if err != nil {
					return ctx, err
				}
				ctx = network.WithConnManagementScope(ctx, scope)
				context.AfterFunc(ctx, scope.Done)
				return ctx, nil
			}),
			quicreuse.VerifySourceAddress(rcmgr.VerifySourceAddress),
		)
		if err != nil {
			return nil, err
		}
		lifecycle.Append(fx.StopHook(cm.Close))
		return cm, nil
	})
}
