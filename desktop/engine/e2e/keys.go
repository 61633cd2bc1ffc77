package e2e

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Labels keep every derivation in its own domain.
const (
	labelSession  = "e2em session v1"
	labelEnvelope = "e2em envelope v1"
	labelChainIR  = "e2em chain initiator->responder"
	labelChainRI  = "e2em chain responder->initiator"
	labelRecord   = "e2em record keys"
	labelRatchet  = "e2em ratchet"
	labelChunk    = "e2em file chunk"
)

// Rekeying limits (NIST SP 800-67 rev. 2 after Sweet32): no 3DES key
// encrypts more than 2^20 blocks, and none is used longer than a day.
const (
	MaxBlocksPerKey = 1 << 20
	MaxKeyAge       = 24 * time.Hour
	// MaxEpochSkip bounds how far ahead a receiver derives to follow a
	// sender's ratchet.
	MaxEpochSkip = 16
)

// RecordKeys derives the cipher and MAC keys of one epoch from its chain
// key. A 3DES key whose thirds coincide degrades to single or double DES;
// such output is rejected and the derivation repeated with a counter.
func RecordKeys(chain []byte) (*Keys, error) {
	for attempt := byte(0); attempt < 16; attempt++ {
		info := labelRecord
		if attempt > 0 {
			info += string([]byte{0, attempt})
		}
		out, err := hkdf.Expand(sha256.New, chain, info, 24+32)
		if err != nil {
			return nil, err
		}
		k := &Keys{}
		copy(k.Cipher[:], out[:24])
		copy(k.MAC[:], out[24:])
		if !WeakTripleDESKey(k.Cipher[:]) {
			return k, nil
		}
	}
	return nil, errors.New("no usable 3DES key after 16 derivations")
}

// WeakTripleDESKey is true when two of the three DES keys are equal
// (ignoring parity bits), which turns 3-key 3DES into something weaker.
func WeakTripleDESKey(k []byte) bool {
	strip := func(b []byte) [8]byte {
		var out [8]byte
		for i := range out {
			out[i] = b[i] &^ 1
		}
		return out
	}
	a, b, c := strip(k[0:8]), strip(k[8:16]), strip(k[16:24])
	return a == b || b == c || a == c
}

// NextChain ratchets a chain key forward; the old one cannot be recomputed
// from the new, so deleting it protects earlier epochs.
func NextChain(chain []byte) ([]byte, error) {
	return hkdf.Expand(sha256.New, chain, labelRatchet, 32)
}

// transcript binds every derivation to who is talking and with which keys:
// length-prefixed fields after a label, hashed into the HKDF salt.
func transcript(label string, fields ...[]byte) []byte {
	h := sha256.New()
	h.Write([]byte(label))
	var n [4]byte
	for _, f := range fields {
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		h.Write(n[:])
		h.Write(f)
	}
	return h.Sum(nil)
}

// Party is one side of an exchange as the other side knows it.
type Party struct {
	LoginID  string
	Identity []byte // X25519 identity public key (32 bytes)
}

// SessionChains runs the authenticated ephemeral exchange of two online
// clients and returns this side's sending and receiving chain keys.
//
// Four X25519 outputs go into HKDF-SHA256: static–static (who is talking),
// both static–ephemeral pairs (each side proves its identity key), and
// ephemeral–ephemeral (forward secrecy: once both ephemeral keys are
// erased, stolen identity keys do not open the session). The salt is a hash
// of both login ids, both identity keys and both ephemeral keys, initiator
// first, so both sides derive the same chains and nothing can be swapped.
func SessionChains(initiator bool, self *ecdh.PrivateKey, selfEph *ecdh.PrivateKey, me, peer Party, peerEph []byte) (send, recv []byte, err error) {
	peerStatic, err := ecdh.X25519().NewPublicKey(peer.Identity)
	if err != nil {
		return nil, nil, fmt.Errorf("peer identity key: %w", err)
	}
	peerE, err := ecdh.X25519().NewPublicKey(peerEph)
	if err != nil {
		return nil, nil, fmt.Errorf("peer ephemeral key: %w", err)
	}
	dh := func(priv *ecdh.PrivateKey, pub *ecdh.PublicKey) []byte {
		if err != nil {
			return nil
		}
		var out []byte
		out, err = priv.ECDH(pub)
		return out
	}
	ss := dh(self, peerStatic)
	var ikm []byte
	var initP, respP Party
	var initE, respE []byte
	if initiator {
		// dh(sI,SR) | dh(eI,SR) | dh(sI,eR) | dh(eI,eR)
		ikm = bytes.Join([][]byte{ss, dh(selfEph, peerStatic), dh(self, peerE), dh(selfEph, peerE)}, nil)
		initP, respP, initE, respE = me, peer, selfEph.PublicKey().Bytes(), peerEph
	} else {
		ikm = bytes.Join([][]byte{ss, dh(self, peerE), dh(selfEph, peerStatic), dh(selfEph, peerE)}, nil)
		initP, respP, initE, respE = peer, me, peerEph, selfEph.PublicKey().Bytes()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("key agreement: %w", err)
	}
	salt := transcript(labelSession, []byte(initP.LoginID), []byte(respP.LoginID), initP.Identity, respP.Identity, initE, respE)
	root, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, nil, err
	}
	ir, err := hkdf.Expand(sha256.New, root, labelChainIR, 32)
	if err != nil {
		return nil, nil, err
	}
	ri, err := hkdf.Expand(sha256.New, root, labelChainRI, 32)
	if err != nil {
		return nil, nil, err
	}
	if initiator {
		return ir, ri, nil
	}
	return ri, ir, nil
}

// EnvelopeKeys derives the one-shot keys for a message to an offline
// recipient: X25519(ephemeral, recipient) gives freshness, and
// X25519(sender, recipient) proves who sent it. The sender passes its
// identity key and the recipient's public key; the recipient passes its own
// identity key and the sender's public key (sender=false).
func EnvelopeKeys(sending bool, self *ecdh.PrivateKey, eph []byte, ephPriv *ecdh.PrivateKey, sender, recipient Party) (*Keys, error) {
	var peer Party
	if sending {
		peer = recipient
	} else {
		peer = sender
	}
	peerStatic, err := ecdh.X25519().NewPublicKey(peer.Identity)
	if err != nil {
		return nil, fmt.Errorf("peer identity key: %w", err)
	}
	var de, ds []byte
	if sending {
		if de, err = ephPriv.ECDH(peerStatic); err != nil {
			return nil, err
		}
	} else {
		ephPub, err := ecdh.X25519().NewPublicKey(eph)
		if err != nil {
			return nil, fmt.Errorf("envelope ephemeral key: %w", err)
		}
		if de, err = self.ECDH(ephPub); err != nil {
			return nil, err
		}
	}
	if ds, err = self.ECDH(peerStatic); err != nil {
		return nil, err
	}
	salt := transcript(labelEnvelope, []byte(sender.LoginID), []byte(recipient.LoginID), sender.Identity, recipient.Identity, eph)
	root, err := hkdf.Extract(sha256.New, append(de, ds...), salt)
	if err != nil {
		return nil, err
	}
	return RecordKeys(root)
}

// ChunkKeys are the keys of chunk i of a file: derived from the file key
// and the index, so chunks encrypt in parallel, resume independently, and
// one ciphertext serves every recipient.
func ChunkKeys(fileKey []byte, i uint64) (*Keys, error) {
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], i)
	chain, err := hkdf.Key(sha256.New, fileKey, idx[:], labelChunk, 32)
	if err != nil {
		return nil, err
	}
	return RecordKeys(chain)
}

// Sender seals one direction's records, ratcheting to a new epoch before
// its key reaches MaxBlocksPerKey blocks or MaxKeyAge.
type Sender struct {
	chain   []byte
	keys    *Keys
	epoch   uint32
	counter uint64
	blocks  uint64
	since   time.Time
	rnd     io.Reader
}

// NewSender starts at epoch 0 of chain.
func NewSender(chain []byte, now time.Time, rnd io.Reader) (*Sender, error) {
	k, err := RecordKeys(chain)
	if err != nil {
		return nil, err
	}
	return &Sender{chain: chain, keys: k, since: now, rnd: rnd}, nil
}

// Epoch is the sender's current key epoch.
func (s *Sender) Epoch() uint32 { return s.epoch }

// Seal makes the next record, rekeying first when the limits require.
func (s *Sender) Seal(plaintext []byte, now time.Time) ([]byte, error) {
	need := BlocksFor(len(plaintext))
	if s.blocks+need > MaxBlocksPerKey || now.Sub(s.since) >= MaxKeyAge {
		if err := s.ratchet(now); err != nil {
			return nil, err
		}
	}
	rec, err := Seal(s.keys, s.epoch, s.counter, plaintext, s.rnd)
	if err != nil {
		return nil, err
	}
	s.counter++
	s.blocks += need
	return rec, nil
}

func (s *Sender) ratchet(now time.Time) error {
	next, err := NextChain(s.chain)
	if err != nil {
		return err
	}
	k, err := RecordKeys(next)
	if err != nil {
		return err
	}
	clear(s.chain)
	s.chain, s.keys, s.epoch, s.counter, s.blocks, s.since = next, k, s.epoch+1, 0, 0, now
	return nil
}

// Receiver opens one direction's records: it follows the sender's ratchet
// forward (up to MaxEpochSkip epochs), keeps the previous epoch for records
// still in flight, and rejects replays and records too far out of order.
type Receiver struct {
	chain  []byte
	cur    epochState
	prev   *epochState
	maxGap uint32
}

type epochState struct {
	epoch  uint32
	keys   *Keys
	window ReplayWindow
}

// NewReceiver starts at epoch 0 of chain.
func NewReceiver(chain []byte) (*Receiver, error) {
	k, err := RecordKeys(chain)
	if err != nil {
		return nil, err
	}
	return &Receiver{chain: chain, cur: epochState{keys: k}, maxGap: MaxEpochSkip}, nil
}

// Open authenticates and decrypts a record, then records its counter.
func (r *Receiver) Open(record []byte) ([]byte, error) {
	h, err := ParseHeader(record)
	if err != nil {
		return nil, err
	}
	switch {
	case h.Epoch == r.cur.epoch:
		return openIn(&r.cur, h, record)
	case r.prev != nil && h.Epoch == r.prev.epoch:
		return openIn(r.prev, h, record)
	case h.Epoch > r.cur.epoch && h.Epoch-r.cur.epoch <= r.maxGap:
		// Derive forward without committing: a forged record must not move
		// the ratchet.
		chain, keys := r.chain, r.cur.keys
		var err error
		for e := r.cur.epoch; e < h.Epoch; e++ {
			if chain, err = NextChain(chain); err != nil {
				return nil, err
			}
		}
		if keys, err = RecordKeys(chain); err != nil {
			return nil, err
		}
		next := epochState{epoch: h.Epoch, keys: keys}
		pt, err := openIn(&next, h, record)
		if err != nil {
			return nil, err
		}
		old := r.cur
		r.prev = &old
		clear(r.chain)
		r.chain, r.cur = chain, next
		return pt, nil
	default:
		return nil, ErrEpoch
	}
}

func openIn(st *epochState, h Header, record []byte) ([]byte, error) {
	if err := st.window.Check(h.Counter); err != nil {
		return nil, err
	}
	_, pt, err := Open(st.keys, record)
	if err != nil {
		return nil, err
	}
	st.window.Accept(h.Counter)
	return pt, nil
}
