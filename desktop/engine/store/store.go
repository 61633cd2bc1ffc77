// Package store owns a client's profile on disk: a badger database in the
// profile folder holding the identity keys (encrypted under a key derived
// from the password with argon2id), pinned contact keys, message history,
// the outgoing queue and the mailbox cursor. One process at a time: badger's
// directory lock refuses a second.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/dgraph-io/badger/v4"
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
func Open(dir string) (*Store, error) { return openDB(dir, dir, nil) }

func openDB(profile, dbDir string, key []byte) (*Store, error) {
	if err := os.MkdirAll(dbDir, 0o700); err != nil {
		return nil, fmt.Errorf("create profile folder: %w", err)
	}
	opts := badger.DefaultOptions(dbDir).WithLogger(nil).WithNumVersionsToKeep(1).
		WithMemTableSize(8 << 20).WithValueThreshold(1 << 10)
	if key != nil {
		// Badger encrypts every table and value log with AES-CTR under data
		// keys it keeps sealed by this one (and rotates every 10 days).
		opts = opts.WithEncryptionKey(key).WithIndexCacheSize(16 << 20)
	}
	db, err := badger.Open(opts)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") || strings.Contains(err.Error(), "resource temporarily unavailable") {
			return nil, ErrInUse
		}
		if errors.Is(err, badger.ErrEncryptionKeyMismatch) {
			return nil, ErrWrongPassword
		}
		return nil, fmt.Errorf("open profile %s: %w", profile, err)
	}
	s := &Store{db: db, dir: profile}
	if s.history, err = openCounter(db, "seq/history"); err == nil {
		s.out, err = openCounter(db, "seq/out")
	}
	if err == nil {
		err = s.buildConversationIndex()
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open profile %s: %w", profile, err)
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
