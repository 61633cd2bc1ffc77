package server

import (
	"context"
	"errors"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store"
)

// Calls anyone may make without a session.
var publicMethods = map[string]bool{
	api.Coordinator_SignUp_FullMethodName: true,
	api.Coordinator_LogIn_FullMethodName:  true,
	api.Coordinator_Relays_FullMethodName: true,
}

type sessionKey struct{}

func sessionFrom(ctx context.Context) Session {
	s, _ := ctx.Value(sessionKey{}).(Session)
	return s
}

// authorize decides who may make a call: coordinator-only methods need a
// client certificate from the cluster CA; client methods need a session token
// this cluster issued, not expired and not logged out.
func (s *Server) authorize(ctx context.Context, method string) (context.Context, error) {
	switch {
	case strings.HasPrefix(method, "/grpc.health."), strings.HasPrefix(method, "/grpc.reflection."), publicMethods[method]:
		return ctx, nil
	case strings.HasPrefix(method, "/"+api.Cluster_ServiceDesc.ServiceName+"/"):
		if !hasClusterCert(ctx) {
			return nil, status.Error(codes.PermissionDenied, "only coordinators of this cluster may call this")
		}
		return ctx, nil
	}
	token, err := bearer(ctx)
	if err != nil {
		return nil, err
	}
	fsm := s.store.FSM()
	info, err := fsm.ClusterInfo()
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Error(codes.Unavailable, "the cluster is still starting; try again")
	} else if err != nil {
		return nil, storeErr(err)
	}
	sess, err := ParseToken(info.TokenKey, info.ClusterId, token, time.Now())
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	// Whether the session was logged out is checked where the call meets
	// the state: writes carry the session id into the state machine, reads
	// check after their read barrier (see Server.barrier). Checking here,
	// before either, could miss a log-out acknowledged by another
	// coordinator.
	return context.WithValue(ctx, sessionKey{}, sess), nil
}

func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(api.TokenKey)
	if len(vals) == 0 {
		return "", status.Error(codes.Unauthenticated, "log in first")
	}
	tok, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		return "", status.Error(codes.Unauthenticated, "the authorization header must be \"Bearer <token>\"")
	}
	return tok, nil
}

func hasClusterCert(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(ti.State.VerifiedChains) > 0
}

// UnaryInterceptor authorises, measures and recovers every unary call.
func (s *Server) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in call", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "the coordinator failed on this call")
		}
		observe(info.FullMethod, err, start)
	}()
	ctx, err = s.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// StreamInterceptor does the same for streams.
func (s *Server) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in stream", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "the coordinator failed on this call")
		}
		observe(info.FullMethod, err, start)
	}()
	ctx, err := s.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &authedStream{ServerStream: ss, ctx: ctx})
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a *authedStream) Context() context.Context { return a.ctx }
