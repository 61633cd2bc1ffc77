package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestStoreErrTellsCancelledFromTooSlow(t *testing.T) {
	for err, want := range map[error]codes.Code{
		context.Canceled: codes.Canceled,
		fmt.Errorf("read index: %w", context.Canceled): codes.Canceled,
		context.DeadlineExceeded:                       codes.DeadlineExceeded,
		errors.New("raft is shutting down"):            codes.Unavailable,
		status.Error(codes.NotFound, "no such group"):  codes.NotFound,
	} {
		if got := status.Code(storeErr(err)); got != want {
			t.Errorf("storeErr(%v) = %v, want %v", err, got, want)
		}
	}
}
