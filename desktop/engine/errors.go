package engine

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/desktop/engine/store"
)

// ErrorKind says what sort of failure an error is, so that each face can
// word it for its people (a terminal names the command to type; a window
// points at a button) and decide what to do (retry, ask again, show a
// banner).
type ErrorKind int

// Kinds of failure.
const (
	KindOther           ErrorKind = iota
	KindNotLoggedIn               // a call that needs a log-in, before one
	KindLoggedIn                  // Login again while logged in
	KindUnreachable               // the cluster cannot be reached now
	KindTimeout                   // the cluster did not answer in time
	KindUnauthenticated           // wrong login id or password, or a session that ended
	KindRateLimited               // too many attempts; try later
	KindNotFound                  // no such account, group, transfer or file
	KindExists                    // already there (a name taken, a member already)
	KindInvalid                   // the request itself is wrong (a bad name, too long a message)
	KindKeyChanged                // a contact's identity key changed; Verify and Trust
	KindProfileInUse              // another process has the profile open
	KindProfileOwned              // the profile belongs to someone else
)

// Error is a failure with its kind. Its text says what happened in plain
// words, and nothing a particular face would say (commands to type,
// flags, buttons).
type Error struct {
	Kind ErrorKind
	Msg  string
	Err  error // the cause, if any
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// KindOf is the kind of err (KindOther for an error that has none).
func KindOf(err error) ErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	var kc *KeyChangedError
	switch {
	case errors.As(err, &kc), errors.Is(err, ErrKeyChanged):
		return KindKeyChanged
	case errors.Is(err, store.ErrInUse):
		return KindProfileInUse
	}
	return KindOther
}

// Errors the engine returns as they are.
var (
	ErrNotLoggedIn = &Error{Kind: KindNotLoggedIn, Msg: "you are not logged in"}
	ErrLoggedIn    = &Error{Kind: KindLoggedIn, Msg: "you are already logged in"}
)

// friendly turns an RPC error into an Error of the right kind, keeping the
// cluster's own words (they are written for people).
func (e *Engine) friendly(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		if strings.Contains(msg, "connection") || strings.Contains(msg, "dial") || strings.Contains(msg, "EOF") {
			return &Error{Kind: KindUnreachable, Msg: fmt.Sprintf("the e2em cluster at %s is unreachable", e.cfg.LB), Err: err}
		}
		return &Error{Kind: KindUnreachable, Msg: msg, Err: err}
	case codes.DeadlineExceeded:
		return &Error{Kind: KindTimeout, Msg: fmt.Sprintf("the e2em cluster at %s did not answer in time", e.cfg.LB), Err: err}
	case codes.Unauthenticated:
		return &Error{Kind: KindUnauthenticated, Msg: msg, Err: err}
	case codes.ResourceExhausted:
		return &Error{Kind: KindRateLimited, Msg: msg, Err: err}
	case codes.NotFound:
		return &Error{Kind: KindNotFound, Msg: msg, Err: err}
	case codes.AlreadyExists:
		return &Error{Kind: KindExists, Msg: msg, Err: err}
	case codes.InvalidArgument:
		return &Error{Kind: KindInvalid, Msg: msg, Err: err}
	}
	return &Error{Kind: KindOther, Msg: msg, Err: err}
}
