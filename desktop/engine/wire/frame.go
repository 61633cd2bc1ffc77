// Package wire owns what clients send each other: the protobuf messages
// (wire.proto) and their framing on a stream, a uvarint length before each
// encoded Frame.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
)

//go:generate protoc -I ../../.. --go_out=../../.. --go_opt=paths=source_relative desktop/engine/wire/wire.proto

// MaxFrame bounds one frame: a 1 MiB record plus its framing.
const MaxFrame = 1<<20 + 4096

// ErrFrameTooLarge is returned for a length prefix over MaxFrame.
var ErrFrameTooLarge = errors.New("frame too large")

// WriteFrame writes one length-prefixed frame.
func WriteFrame(w io.Writer, f *Frame) error {
	b, err := proto.Marshal(f)
	if err != nil {
		return err
	}
	if len(b) > MaxFrame {
		return ErrFrameTooLarge
	}
	buf := make([]byte, 0, binary.MaxVarintLen64+len(b))
	buf = binary.AppendUvarint(buf, uint64(len(b)))
	_, err = w.Write(append(buf, b...))
	return err
}

// ReadFrame reads one length-prefixed frame.
func ReadFrame(r *bufio.Reader) (*Frame, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > MaxFrame {
		return nil, ErrFrameTooLarge
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("truncated frame: %w", err)
	}
	f := &Frame{}
	if err := proto.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("malformed frame: %w", err)
	}
	return f, nil
}
