package api

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// pingCounter reads HTTP/2 frames from a byte stream, in whatever pieces
// they come, and counts the PINGs that are not answers to a PING.
type pingCounter struct {
	mu    sync.Mutex
	skip  int // bytes before the first frame (the client's preface)
	buf   []byte
	pings int
}

func (p *pingCounter) feed(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.skip > 0 {
		n := min(p.skip, len(b))
		p.skip -= n
		b = b[n:]
	}
	p.buf = append(p.buf, b...)
	for len(p.buf) >= 9 {
		length := int(p.buf[0])<<16 | int(binary.BigEndian.Uint16(p.buf[1:3]))
		if len(p.buf) < 9+length {
			return
		}
		if http2.FrameType(p.buf[3]) == http2.FramePing && http2.Flags(p.buf[4])&http2.FlagPingAck == 0 {
			p.pings++
		}
		p.buf = p.buf[9+length:]
	}
}

func (p *pingCounter) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pings
}

// countingConn counts the PINGs each side of a client connection starts.
type countingConn struct {
	net.Conn
	fromServer, fromClient *pingCounter
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.fromServer.feed(b[:n])
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.fromClient.feed(b)
	return c.Conn.Write(b)
}

// pingsDuringCalls makes 50 small unary calls and returns how many PINGs
// the server and the client started meanwhile.
func pingsDuringCalls(t *testing.T, srvOpts []grpc.ServerOption, dialOpts []grpc.DialOption) (server, client int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(srvOpts...)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	defer gs.Stop()
	fromServer, fromClient := &pingCounter{}, &pingCounter{skip: len(http2.ClientPreface)}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, fromServer: fromServer, fromClient: fromClient}, nil
	}
	conn, err := grpc.NewClient(ln.Addr().String(), append(dialOpts,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for i := 0; i < 50; i++ {
		if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	return fromServer.count(), fromClient.count()
}

// With the API's windows set on both ends, small calls carry no PINGs;
// grpc-go's defaults (the control) send them all along.
func TestAPIWindowsStopBandwidthPings(t *testing.T) {
	if s, c := pingsDuringCalls(t, nil, nil); s == 0 || c == 0 {
		t.Fatalf("control: grpc-go's defaults started %d PINGs from the server and %d from the client; the counter misses them", s, c)
	}
	if s, c := pingsDuringCalls(t, ServerWindowOptions(), windowDialOptions()); s != 0 || c != 0 {
		t.Fatalf("with the API's windows: %d PINGs from the server, %d from the client during 50 calls", s, c)
	}
}

// BenchmarkAuthSecret is what deriving the log-in secret adds to each
// sign-up and log-in on the client (issue 12, point 3).
func BenchmarkAuthSecret(b *testing.B) {
	for b.Loop() {
		AuthSecret("alice101", "correct horse battery staple")
	}
}
