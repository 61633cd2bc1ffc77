// Package store owns a client's profile on disk: a badger database in the
// profile folder holding the identity keys (encrypted under a key derived
// from the password with argon2id), pinned contact keys, message history,
// the outgoing queue and the mailbox cursor. One process at a time: badger's
// directory lock refuses a second.
package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/crypto/argon2"
)

// Errors people see, in their words.
var (
	ErrInUse         = errors.New("this profile is open in another e2em process")
	ErrWrongPassword = errors.New("wrong password for this profile")
	ErrNoIdentity    = errors.New("this profile has no identity keys yet")
	ErrNotFound      = errors.New("not found")
)

// Store is an open profile.
type Store struct {
	db      *badger.DB
	dir     string
	history *counter // numbers history entries in the order stored
	out     *counter // numbers queue entries in the order queued
}

// Open opens (or creates) the profile in dir. Writes reach the operating
// system before a call returns, so closing or killing the app loses
// nothing; they are not forced to the disk each time (a power cut can lose
// the last moments), which is what keeps a message's round trip in
// microseconds.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create profile folder: %w", err)
	}
	opts := badger.DefaultOptions(dir).WithLogger(nil).WithNumVersionsToKeep(1).
		WithMemTableSize(8 << 20).WithValueThreshold(1 << 10)
	db, err := badger.Open(opts)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") || strings.Contains(err.Error(), "resource temporarily unavailable") {
			return nil, ErrInUse
		}
		return nil, fmt.Errorf("open profile %s: %w", dir, err)
	}
	s := &Store{db: db, dir: dir}
	if s.history, err = openCounter(db, "seq/history"); err == nil {
		s.out, err = openCounter(db, "seq/out")
	}
	if err == nil {
		err = s.buildConversationIndex()
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open profile %s: %w", dir, err)
	}
	return s, nil
}

// Close closes the profile.
func (s *Store) Close() error { return s.db.Close() }

// Dir is the profile folder.
func (s *Store) Dir() string { return s.dir }

// update runs fn in a read-write transaction, again when badger reports a
// conflict: two transactions that read the same counter or index (a message
// arriving while one is sent, two arriving at once) cannot both commit, and
// the one that lost sees the other's writes on its next try. fn must only
// set its results, so that running it again is harmless.
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	for attempt := 1; ; attempt++ {
		err := s.db.Update(fn)
		if !errors.Is(err, badger.ErrConflict) || attempt == maxConflictRetries {
			return err
		}
	}
}

const maxConflictRetries = 64

func (s *Store) put(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error { return txn.Set([]byte(key), b) })
}

func (s *Store) get(key string, v any) error {
	return s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		return item.Value(func(b []byte) error { return decode(b, v) })
	})
}

// decode reads a stored JSON record; a damaged one is an error, never a
// panic or a half-filled value silently used.
func decode(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("damaged profile record: %w", err)
	}
	return nil
}

// Identity is a client's long-term secret keys.
type Identity struct {
	LoginID  string `json:"login_id"`
	Libp2p   []byte `json:"libp2p"`   // marshalled libp2p Ed25519 private key
	X25519   []byte `json:"x25519"`   // X25519 identity private key
	Username string `json:"username"` // as the directory knows it
}

// sealedIdentity is how Identity sits on disk: AES-256-GCM under an
// argon2id key from the password (at rest, not end to end: the 3DES
// construction of DESIGN §5 is for what crosses the network).
type sealedIdentity struct {
	LoginID string `json:"login_id"`
	Time    uint32 `json:"t"`
	Memory  uint32 `json:"m"`
	Threads uint8  `json:"p"`
	Salt    []byte `json:"salt"`
	Nonce   []byte `json:"nonce"`
	Sealed  []byte `json:"sealed"`
}

const keyIdentity = "identity"

// Owner is the login id the profile belongs to, or "" for a new profile.
func (s *Store) Owner() (string, error) {
	var si sealedIdentity
	err := s.get(keyIdentity, &si)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	return si.LoginID, err
}

// SaveIdentity encrypts and stores the identity under password.
func (s *Store) SaveIdentity(id *Identity, password string) error {
	si := sealedIdentity{LoginID: id.LoginID, Time: 3, Memory: 64 * 1024, Threads: 2, Salt: make([]byte, 16), Nonce: make([]byte, 12)}
	rand.Read(si.Salt)
	rand.Read(si.Nonce)
	aead, err := identityAEAD(password, &si)
	if err != nil {
		return err
	}
	plain, err := json.Marshal(id)
	if err != nil {
		return err
	}
	si.Sealed = aead.Seal(nil, si.Nonce, plain, []byte(id.LoginID))
	clear(plain)
	return s.put(keyIdentity, &si)
}

// LoadIdentity decrypts the identity; ErrWrongPassword if it cannot.
func (s *Store) LoadIdentity(password string) (*Identity, error) {
	var si sealedIdentity
	if err := s.get(keyIdentity, &si); errors.Is(err, ErrNotFound) {
		return nil, ErrNoIdentity
	} else if err != nil {
		return nil, err
	}
	if si.Time == 0 || si.Time > 16 || si.Memory > 1<<21 || si.Threads == 0 || len(si.Nonce) != 12 {
		return nil, errors.New("damaged profile: identity parameters")
	}
	aead, err := identityAEAD(password, &si)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, si.Nonce, si.Sealed, []byte(si.LoginID))
	if err != nil {
		return nil, ErrWrongPassword
	}
	defer clear(plain)
	var id Identity
	if err := decode(plain, &id); err != nil {
		return nil, err
	}
	return &id, nil
}

func identityAEAD(password string, si *sealedIdentity) (cipher.AEAD, error) {
	key := argon2.IDKey([]byte(password), si.Salt, si.Time, si.Memory, si.Threads, 32)
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Contact is someone whose identity key this profile pinned.
type Contact struct {
	LoginID  string    `json:"login_id"`
	Identity []byte    `json:"identity"`
	PeerID   string    `json:"peer_id"`
	PinnedAt time.Time `json:"pinned_at"`
	// PendingIdentity is a changed key the directory now gives; messages
	// to the contact wait until the person accepts it (Trust).
	PendingIdentity []byte `json:"pending_identity,omitempty"`
	PendingPeerID   string `json:"pending_peer_id,omitempty"`
}

// Contact returns a pinned contact or ErrNotFound.
func (s *Store) Contact(login string) (*Contact, error) {
	var c Contact
	if err := s.get("contact/"+login, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// ContactIDs lists every pinned contact's login id.
func (s *Store) ContactIDs() []string {
	var out []string
	s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("contact/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, string(it.Item().Key()[len("contact/"):]))
		}
		return nil
	})
	return out
}

// SaveContact pins or updates a contact.
func (s *Store) SaveContact(c *Contact) error { return s.put("contact/"+c.LoginID, c) }

// Message is one line of history.
type Message struct {
	ID        string    `json:"id"`
	Peer      string    `json:"peer"`  // the other person (DM) or the sender (incoming group)
	Group     string    `json:"group"` // set for group messages
	From      string    `json:"from"`
	Body      string    `json:"body"`
	Sent      time.Time `json:"sent"`
	Outgoing  bool      `json:"outgoing"`
	State     string    `json:"state"` // queued, sent, delivered (outgoing); received
	StoredSeq uint64    `json:"seq"`
	File      *FileRef  `json:"file,omitempty"` // set when the message is a file
}

// FileRef is the file a message carries: the transfer that moves it, and
// for a received file where it was saved.
type FileRef struct {
	Transfer string `json:"transfer"`
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Path     string `json:"path,omitempty"`
}

// Delivery states of an outgoing message.
const (
	StateQueued    = "queued"
	StateSent      = "sent"
	StateDelivered = "delivered"
	StateReceived  = "received"
)

// Conversation is the history key a message belongs to: the group for
// group messages, the other person for direct ones.
func (m *Message) Conversation() string {
	if m.Group != "" {
		return "#" + strings.ToLower(m.Group)
	}
	return "@" + m.Peer
}

// AddMessage stores a message once: false if its id (for this
// conversation) is already there, which is how a message delivered twice
// shows once.
func (s *Store) AddMessage(m *Message) (bool, error) {
	added := false
	err := s.update(func(txn *badger.Txn) error {
		var err error
		added, err = s.addMessage(txn, m)
		return err
	})
	return added, err
}

func (s *Store) addMessage(txn *badger.Txn, m *Message) (bool, error) {
	idKey := msgIDKey(m.Conversation(), m.ID)
	if _, err := txn.Get(idKey); err == nil {
		return false, nil
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return false, err
	}
	seq, err := s.history.next()
	if err != nil {
		return false, err
	}
	m.StoredSeq = seq
	b, err := json.Marshal(m)
	if err != nil {
		return false, err
	}
	hk := historyKey(m.Conversation(), seq)
	if err := txn.Set(hk, b); err != nil {
		return false, err
	}
	if err := indexConversation(txn, m.Conversation()); err != nil {
		return false, err
	}
	if m.Outgoing {
		if err := txn.Set([]byte("outconv/"+m.ID), []byte(m.Conversation())); err != nil {
			return false, err
		}
	}
	return true, txn.Set(idKey, hk)
}

// AddOutgoing stores a message you send and queues its deliveries in one
// transaction: after it returns, a crash loses neither. A nil m queues
// deliveries that have no line in the history (a file's control messages).
func (s *Store) AddOutgoing(m *Message, deliveries ...*Outgoing) error {
	return s.update(func(txn *badger.Txn) error {
		if m != nil {
			if _, err := s.addMessage(txn, m); err != nil {
				return err
			}
		}
		return s.enqueue(txn, deliveries)
	})
}

func conversationOf(txn *badger.Txn, id string) (string, error) {
	item, err := txn.Get([]byte("outconv/" + id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", err
	}
	b, err := item.ValueCopy(nil)
	return string(b), err
}

// setState changes the delivery state of a stored outgoing message. A state
// never goes backwards (delivered stays delivered).
func setState(txn *badger.Txn, conversation, id, state string) error {
	item, err := txn.Get(msgIDKey(conversation, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	hk, err := item.ValueCopy(nil)
	if err != nil {
		return err
	}
	item, err = txn.Get(hk)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	var m Message
	if err := item.Value(func(b []byte) error { return decode(b, &m) }); err != nil {
		return err
	}
	if rank(state) <= rank(m.State) {
		return nil
	}
	m.State = state
	b, err := json.Marshal(&m)
	if err != nil {
		return err
	}
	return txn.Set(hk, b)
}

// Delivery is news about an outgoing message, found by ID: it left on a
// session (StateSent), or its recipient To acknowledged it
// (StateDelivered: its queue entry for To goes too).
type Delivery struct {
	To, ID, State string
}

// RecordDeliveries applies deliveries in one transaction and reports for
// each whether it concerned a message of this profile.
func (s *Store) RecordDeliveries(ds []Delivery) ([]bool, error) {
	ours := make([]bool, len(ds))
	err := s.update(func(txn *badger.Txn) error {
		clear(ours) // a retry starts over
		for i, d := range ds {
			if d.State == StateDelivered {
				if _, err := acknowledged(txn, d.To, d.ID); err != nil {
					return err
				}
			}
			conv, err := conversationOf(txn, d.ID)
			if errors.Is(err, ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if err := setState(txn, conv, d.ID, d.State); errors.Is(err, ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			ours[i] = true
		}
		return nil
	})
	return ours, err
}

func rank(state string) int {
	switch state {
	case StateQueued:
		return 1
	case StateSent:
		return 2
	case StateDelivered:
		return 3
	}
	return 0
}

// History returns the last n messages of a conversation, oldest first.
func (s *Store) History(conversation string, n int) ([]*Message, error) {
	var out []*Message
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := []byte("hist/" + conversation + "\x00")
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: true, PrefetchValues: true})
		defer it.Close()
		for it.Seek(append(append([]byte{}, prefix...), 0xff)); it.Valid() && len(out) < n; it.Next() {
			var m Message
			if err := it.Item().Value(func(b []byte) error { return decode(b, &m) }); err != nil {
				return err
			}
			out = append(out, &m)
		}
		return nil
	})
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, err
}

// Search finds messages whose text contains q (case-insensitively), in the
// order they were stored.
func (s *Store) Search(q string, limit int) ([]*Message, error) {
	q = strings.ToLower(q)
	var out []*Message
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("hist/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var m Message
			if err := it.Item().Value(func(b []byte) error { return decode(b, &m) }); err != nil {
				return err
			}
			if strings.Contains(strings.ToLower(m.Body), q) {
				out = append(out, &m)
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].StoredSeq < out[j].StoredSeq })
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, err
}

// Outgoing is a queued message not yet handed to the network for good.
type Outgoing struct {
	Seq     uint64 `json:"seq"`
	ID      string `json:"id"`
	To      string `json:"to"`
	Group   string `json:"group,omitempty"`
	Body    string `json:"body"`
	SentAt  int64  `json:"sent_at"`
	Payload []byte `json:"payload"` // the encoded wire.Payload
	// Kind is "" for a text, KindFileOffer for a file's manifest and
	// KindControl for a file's result or cancellation (no history line).
	Kind     string `json:"kind,omitempty"`
	Transfer string `json:"transfer,omitempty"` // the file transfer it concerns
}

// Kinds of queued deliveries besides texts.
const (
	KindFileOffer = "file_offer"
	KindControl   = "control"
)

func (s *Store) enqueue(txn *badger.Txn, msgs []*Outgoing) error {
	for _, o := range msgs {
		seq, err := s.out.next()
		if err != nil {
			return err
		}
		o.Seq = seq
		b, err := json.Marshal(o)
		if err != nil {
			return err
		}
		if err := txn.Set(seqKey("out/", seq), b); err != nil {
			return err
		}
		// An index by recipient and id, so an acknowledgement finds its
		// queue entry without reading the whole queue.
		if err := txn.Set(outIndexKey(o.To, o.ID), binary.BigEndian.AppendUint64(nil, seq)); err != nil {
			return err
		}
	}
	return nil
}

func outIndexKey(to, id string) []byte { return []byte("outidx/" + to + "\x00" + id) }

// acknowledged removes the queue entry of message id to recipient to, if
// it is still queued, and reports whether it was.
func acknowledged(txn *badger.Txn, to, id string) (bool, error) {
	item, err := txn.Get(outIndexKey(to, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	seqb, err := item.ValueCopy(nil)
	if err != nil || len(seqb) != 8 {
		return false, errors.New("damaged profile: queue index")
	}
	if err := txn.Delete(outIndexKey(to, id)); err != nil {
		return false, err
	}
	return true, txn.Delete(seqKey("out/", binary.BigEndian.Uint64(seqb)))
}

// Queue lists queued messages in the order they were queued.
func (s *Store) Queue() ([]*Outgoing, error) {
	var out []*Outgoing
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("out/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var o Outgoing
			if err := it.Item().Value(func(b []byte) error { return decode(b, &o) }); err != nil {
				return err
			}
			out = append(out, &o)
		}
		return nil
	})
	return out, err
}

// Dequeue removes a message from the queue once the network took it.
func (s *Store) Dequeue(o *Outgoing) error {
	return s.update(func(txn *badger.Txn) error {
		if err := txn.Delete(outIndexKey(o.To, o.ID)); err != nil {
			return err
		}
		return txn.Delete(seqKey("out/", o.Seq))
	})
}

// MailCursor is the last mailbox sequence number this profile processed.
func (s *Store) MailCursor() (uint64, error) {
	var c uint64
	err := s.get("mailcursor", &c)
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	return c, err
}

// SetMailCursor records mailbox progress.
func (s *Store) SetMailCursor(seq uint64) error { return s.put("mailcursor", seq) }

// counter hands out increasing numbers without a read and a write of the
// counter in every transaction (which also made every two transactions that
// numbered something conflict). It reserves numbers in blocks: the profile
// holds the end of the block in use, written and committed before any
// number of the block is used, so after a crash numbering resumes past
// everything that may have been stored. Unused numbers are skipped, never
// reused.
type counter struct {
	db       *badger.DB
	key      []byte
	mu       sync.Mutex
	last     uint64 // the last number handed out
	reserved uint64 // numbers up to this one may be handed out
}

const counterBlock = 1024

func openCounter(db *badger.DB, key string) (*counter, error) {
	c := &counter{db: db, key: []byte(key)}
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(c.key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		return item.Value(func(b []byte) error {
			if len(b) != 8 {
				return errors.New("damaged profile: counter")
			}
			c.reserved = binary.BigEndian.Uint64(b)
			return nil
		})
	})
	// Written by an older version this was the last number used; either
	// way, numbers above it are free.
	c.last = c.reserved
	return c, err
}

func (c *counter) next() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == c.reserved {
		end := c.reserved + counterBlock
		err := c.db.Update(func(txn *badger.Txn) error {
			return txn.Set(c.key, binary.BigEndian.AppendUint64(nil, end))
		})
		if err != nil {
			return 0, fmt.Errorf("reserve numbers: %w", err)
		}
		c.reserved = end
	}
	c.last++
	return c.last, nil
}

func seqKey(prefix string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(prefix), seq)
}

// Keys end a conversation name with a zero byte, which names cannot hold,
// so one conversation's prefix never covers another's.
func historyKey(conv string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("hist/"+conv+"\x00"), seq)
}

func msgIDKey(conv, id string) []byte { return []byte("msgid/" + conv + "\x00" + id) }
