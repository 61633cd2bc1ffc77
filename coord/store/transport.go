package store

import (
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

const readRoundTimeout = 5 * time.Second

// tlsStreamLayer carries Raft traffic over mutual TLS: both ends present a
// certificate from the cluster CA, so nothing outside the cluster can join
// or inject entries, and garbage on the port ends in a failed handshake.
type tlsStreamLayer struct {
	net.Listener
	client *tls.Config
}

func newTLSStreamLayer(bind string, server, client *tls.Config) (*tlsStreamLayer, error) {
	if server == nil || client == nil {
		return nil, errors.New("raft transport needs server and client TLS configuration")
	}
	server = server.Clone()
	server.ClientAuth = tls.RequireAndVerifyClientCert
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	return &tlsStreamLayer{Listener: tls.NewListener(keepAliveListener{ln}, server), client: client}, nil
}

// Dial implements raft.StreamLayer.
func (t *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(d, "tcp", string(address), t.client)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// keepAliveListener turns on TCP keep-alives so a peer that vanished without
// closing its connection does not hold a Raft goroutine forever.
type keepAliveListener struct{ net.Listener }

func (k keepAliveListener) Accept() (net.Conn, error) {
	c, err := k.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
	}
	return c, nil
}
