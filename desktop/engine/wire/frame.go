// Package wire owns what clients send each other: the protobuf messages
// (wire.proto) and their framing on a stream, a uvarint length before each
// encoded Frame.
package wire

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
)

//go:generate protoc -I ../../.. --go_out=../../.. --go_opt=paths=source_relative desktop/engine/wire/wire.proto

// MaxFrame bounds one frame: a 1 MiB record plus its framing.
const MaxFrame = 1<<20 + 4096

// ErrFrameTooLarge is returned for a length prefix over MaxFrame.
var ErrFrameTooLarge = errors.New("frame too large")

// WriteFrame writes one length-prefixed frame.
func WriteFrame(w io.Writer, f *Frame) error { return writeMessage(w, f, MaxFrame) }

// ReadFrame reads one length-prefixed frame.
func ReadFrame(r *bufio.Reader) (*Frame, error) {
	f := &Frame{}
	if err := readMessage(r, f, MaxFrame); err != nil {
		return nil, err
	}
	return f, nil
}

// writeMessage writes m after its length as a uvarint, in one Write.
func writeMessage(w io.Writer, m proto.Message, max int) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > max {
		return ErrFrameTooLarge
	}
	buf := make([]byte, 0, binary.MaxVarintLen64+len(b))
	buf = binary.AppendUvarint(buf, uint64(len(b)))
	_, err = w.Write(append(buf, b...))
	return err
}

// readMessage reads what writeMessage wrote, refusing lengths over max
// before reading (or allocating) them.
func readMessage(r *bufio.Reader, m proto.Message, max int) error {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return err
	}
	if n > uint64(max) {
		return ErrFrameTooLarge
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("truncated frame: %w", err)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("malformed frame: %w", err)
	}
	return nil
}

// Limits of the file protocol, which every receiver enforces on what
// peers send (ValidateOffer, ReadFileFrame).
const (
	// ChunkSize is the chunk size senders use: its sealed record, in a
	// FileChunk payload, in an envelope, stays under the mailbox's 1 MiB.
	ChunkSize = 512 << 10
	// MinChunkSize and MaxChunkSize bound what an offer may name.
	MinChunkSize = 16 << 10
	MaxChunkSize = ChunkSize
	// MaxChunks bounds a file's chunk count (and so the have-bitmap of a
	// FileGet: 256 KiB): a terabyte in 512 KiB chunks.
	MaxChunks = 1 << 21
	// MaxFileFrame bounds one frame on a file stream: a sealed chunk of
	// MaxChunkSize with its fields, or a FileGet with a full bitmap.
	MaxFileFrame = MaxChunkSize + 4096
	// MaxFileNameBytes bounds the name an offer carries (it is sanitized
	// again before anything is written).
	MaxFileNameBytes = 4096
)

// ChunkCount is how many chunks a file of size bytes has (an empty file
// has none).
func ChunkCount(size uint64, chunkSize uint32) uint64 {
	if chunkSize == 0 {
		return 0
	}
	return (size + uint64(chunkSize) - 1) / uint64(chunkSize)
}

// ValidateOffer checks a manifest from a peer before anything is made for
// it: every field present and within bounds.
func ValidateOffer(o *FileOffer) error {
	switch {
	case !ValidTransferID(o.GetTransferId()):
		return errors.New("file offer: bad transfer id")
	case o.Name == "" || len(o.Name) > MaxFileNameBytes:
		return errors.New("file offer: bad file name")
	case o.ChunkSize < MinChunkSize || o.ChunkSize > MaxChunkSize:
		return fmt.Errorf("file offer: chunk size %d out of range", o.ChunkSize)
	case ChunkCount(o.Size, o.ChunkSize) > MaxChunks:
		return fmt.Errorf("file offer: %d bytes is too large", o.Size)
	case len(o.Sha256) != 32 || len(o.FileKey) != 32:
		return errors.New("file offer: bad hash or key")
	case len(o.Token) < 16 || len(o.Token) > 64:
		return errors.New("file offer: bad token")
	case len(o.Group) > 256:
		return errors.New("file offer: bad group")
	}
	return nil
}

// ValidTransferID reports whether id has the form transfer ids have
// (lower-case hex, 64 characters at most).
func ValidTransferID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// WriteFileFrame writes one length-prefixed frame on a file stream.
func WriteFileFrame(w io.Writer, f *FileFrame) error { return writeMessage(w, f, MaxFileFrame) }

// ReadFileFrame reads one length-prefixed frame from a file stream.
func ReadFileFrame(r *bufio.Reader) (*FileFrame, error) {
	f := &FileFrame{}
	if err := readMessage(r, f, MaxFileFrame); err != nil {
		return nil, err
	}
	return f, nil
}

// Bounds on what a peer's payload may hold.
const (
	MaxTextBytes = 60000 // what a sender may write in one message
	maxIDBytes   = 64
	maxAckIDs    = 1024
	maxGroupName = 64
	maxReason    = 1024
)

// ValidatePayload checks a decoded payload's fields against the bounds
// the receive path relies on: ids, text and group names, acknowledgement
// lists and file fields. What fails is refused before anything is stored.
func ValidatePayload(p *Payload) error {
	if !validID(p.Id) {
		return errors.New("payload id is empty, too long or not printable")
	}
	switch k := p.Kind.(type) {
	case *Payload_Text:
		if len(k.Text.Body) > MaxTextBytes || !utf8.ValidString(k.Text.Body) {
			return fmt.Errorf("text over %d bytes or not UTF-8", MaxTextBytes)
		}
		if !validGroupLabel(k.Text.Group) {
			return errors.New("bad group name")
		}
	case *Payload_Ack:
		if len(k.Ack.Ids) > maxAckIDs {
			return fmt.Errorf("over %d acknowledgements", maxAckIDs)
		}
		for _, id := range k.Ack.Ids {
			if !validID(id) {
				return errors.New("bad acknowledged id")
			}
		}
	case *Payload_FileOffer:
		if !validGroupLabel(k.FileOffer.Group) {
			return errors.New("bad group name")
		}
		return ValidateOffer(k.FileOffer)
	case *Payload_FileResult:
		if !ValidTransferID(k.FileResult.TransferId) || len(k.FileResult.Reason) > maxReason {
			return errors.New("bad file result")
		}
	case *Payload_FileCancel:
		if !ValidTransferID(k.FileCancel.TransferId) || len(k.FileCancel.Reason) > maxReason {
			return errors.New("bad file cancel")
		}
	case *Payload_FileChunk:
		if !ValidTransferID(k.FileChunk.TransferId) || k.FileChunk.Index >= MaxChunks || len(k.FileChunk.Sealed) > MaxChunkSize+1024 {
			return errors.New("bad file chunk")
		}
	case *Payload_Candidates:
		return validateCandidates(k.Candidates)
	case *Payload_Punch:
		if len(k.Punch.Nonce) != PunchNonceBytes || k.Punch.Step < Punch_READY || k.Punch.Step > Punch_GIVE_UP || k.Punch.Port > 65535 {
			return errors.New("bad punch")
		}
	case nil:
		return errors.New("empty payload")
	}
	return nil
}

const (
	// MaxCandidates bounds the addresses a peer offers.
	MaxCandidates = 16
	// maxAddrBytes bounds one binary multiaddr.
	maxAddrBytes = 256
	// PunchNonceBytes is the length of a Punch attempt's nonce.
	PunchNonceBytes = 16
)

// validateCandidates checks bounds only; the p2p package parses the
// addresses and keeps those it can dial.
func validateCandidates(c *Candidates) error {
	if len(c.Addrs) > MaxCandidates {
		return fmt.Errorf("over %d candidate addresses", MaxCandidates)
	}
	for _, a := range c.Addrs {
		if len(a) == 0 || len(a) > maxAddrBytes {
			return errors.New("bad candidate address")
		}
	}
	if len(c.PublicUdp) > maxAddrBytes || c.Nat < NATKind_NAT_UNKNOWN || c.Nat > NATKind_NAT_RANDOM_PORT {
		return errors.New("bad candidates")
	}
	return nil
}

// validGroupLabel: empty (not a group message) or a name a group could have.
func validGroupLabel(g string) bool {
	return len(g) <= maxGroupName && !strings.ContainsAny(g, "/ \x00") && utf8.ValidString(g)
}

// NewID is a fresh random id for a payload or a transfer (24 hex digits).
func NewID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func validID(id string) bool {
	if id == "" || len(id) > maxIDBytes {
		return false
	}
	for _, r := range id {
		if r <= ' ' || r > '~' {
			return false
		}
	}
	return true
}
