package api

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/internal/pki"
)

// TokenKey is the metadata key carrying "Bearer <token>".
const TokenKey = "authorization"

// MaxMessageBytes bounds a gRPC message on both sides: a 1 MiB envelope plus
// framing fits, anything much larger is refused before it is read.
const MaxMessageBytes = 2 << 20

// Flow-control windows of the API's HTTP/2 connections, on both ends. Set,
// they turn off grpc-go's bandwidth-delay estimation, which otherwise sends
// a PING after the first data of nearly every call and waits for its
// answer: with small calls the windows never grow, so it never stops, and
// each call carried an extra frame each way. A stream's window holds the
// largest message (MaxMessageBytes) without a window update.
const (
	StreamWindow = 2 << 20
	ConnWindow   = 8 << 20
)

// ServerWindowOptions set a server's flow-control windows (see StreamWindow).
func ServerWindowOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.InitialWindowSize(StreamWindow), grpc.InitialConnWindowSize(ConnWindow)}
}

func windowDialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithInitialWindowSize(StreamWindow), grpc.WithInitialConnWindowSize(ConnWindow)}
}

// Dial connects to a coordinator or balancer at addr over TLS, trusting the
// cluster CA in caFile. The server name checked is addr's host.
func Dial(addr, caFile string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	cfg, err := pki.ClientConfig(caFile, "", "")
	if err != nil {
		return nil, err
	}
	return DialTLS(addr, cfg, opts...)
}

// DialTLS is Dial with a ready TLS configuration (e.g. with a client
// certificate for coordinator-to-coordinator calls).
func DialTLS(addr string, cfg *tls.Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("coordinator address %q: %w", addr, err)
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithDefaultServiceConfig(retryPolicy),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: false}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
	}, opts...)
	all = append(all, windowDialOptions()...)
	return grpc.NewClient(addr, all...)
}

// retryPolicy retries the calls that are safe to repeat when the
// coordinator behind the balancer went away mid-call (UNAVAILABLE): reads,
// and writes whose repetition changes nothing (a mailbox envelope carries
// its own message id; acknowledging or publishing twice is the same).
// Sign-up and group changes are not retried: a repeat would answer
// "already exists" for what the first attempt did.
const retryPolicy = `{"methodConfig": [{
  "name": [
    {"service": "e2em.coord.v1.Coordinator", "method": "LogIn"},
    {"service": "e2em.coord.v1.Coordinator", "method": "LogOut"},
    {"service": "e2em.coord.v1.Coordinator", "method": "PublishKeys"},
    {"service": "e2em.coord.v1.Coordinator", "method": "LookUp"},
    {"service": "e2em.coord.v1.Coordinator", "method": "ListGroups"},
    {"service": "e2em.coord.v1.Coordinator", "method": "MyGroups"},
    {"service": "e2em.coord.v1.Coordinator", "method": "Members"},
    {"service": "e2em.coord.v1.Coordinator", "method": "PutMail"},
    {"service": "e2em.coord.v1.Coordinator", "method": "FetchMail"},
    {"service": "e2em.coord.v1.Coordinator", "method": "AckMail"},
    {"service": "e2em.coord.v1.Coordinator", "method": "Relays"},
    {"service": "grpc.health.v1.Health", "method": "Check"}
  ],
  "retryPolicy": {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"]
  }
}]}`

// WithToken attaches a session token to outgoing calls made with ctx.
func WithToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, TokenKey, "Bearer "+token)
}

// RetryAfter is how long an answer asks the caller to wait before trying
// again (a coordinator whose log-in queue is full says so with
// ResourceExhausted and a RetryInfo), and whether it said.
func RetryAfter(err error) (time.Duration, bool) {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.RetryDelay != nil {
			return ri.RetryDelay.AsDuration(), true
		}
	}
	return 0, false
}
