package store

import (
	"encoding/binary"
	"errors"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// Conversations: every conversation with a message has a key in an index
// (written blindly with each message, so messages arriving at once never
// conflict over it), and a read mark: the history number of the last
// message read. Unread counts and last messages are read from the history
// itself, so they cannot disagree with it.

const (
	prefixConvIndex = "convidx/"
	prefixReadMark  = "read/"
	keyConvIndexed  = "convidx-built" // the index covers history written before it existed
)

// ConversationInfo is one conversation as a list shows it.
type ConversationInfo struct {
	Key    string   // "@login" or "#group"
	Last   *Message // the newest message
	Unread int      // messages received after the read mark (at most MaxUnread)
}

// MaxUnread bounds how far back an unread count is counted.
const MaxUnread = 999

// indexConversation notes that conv has messages.
func indexConversation(txn *badger.Txn, conv string) error {
	return txn.Set([]byte(prefixConvIndex+conv), nil)
}

// buildConversationIndex indexes the conversations of history written
// before the index existed, once.
func (s *Store) buildConversationIndex() error {
	if err := s.get(keyConvIndexed, new(bool)); err == nil {
		return nil
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	convs := map[string]bool{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("hist/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := string(it.Item().Key()[len("hist/"):])
			if i := strings.IndexByte(k, 0); i > 0 {
				convs[k[:i]] = true
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error {
		for c := range convs {
			if err := indexConversation(txn, c); err != nil {
				return err
			}
		}
		return txn.Set([]byte(keyConvIndexed), []byte("true"))
	})
}

// Conversations lists every conversation with its newest message and
// unread count (in no particular order).
func (s *Store) Conversations() ([]ConversationInfo, error) {
	var out []ConversationInfo
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixConvIndex)})
		var keys []string
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, string(it.Item().Key()[len(prefixConvIndex):]))
		}
		it.Close()
		for _, conv := range keys {
			info, err := conversation(txn, conv)
			if err != nil {
				return err
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

// conversation reads conv's newest message and counts what arrived after
// its read mark.
func conversation(txn *badger.Txn, conv string) (ConversationInfo, error) {
	info := ConversationInfo{Key: conv}
	mark, err := readMark(txn, conv)
	if err != nil {
		return info, err
	}
	prefix := []byte("hist/" + conv + "\x00")
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: true, PrefetchValues: false})
	defer it.Close()
	for it.Seek(append(append([]byte{}, prefix...), 0xff)); it.Valid(); it.Next() {
		var m Message
		if err := it.Item().Value(func(b []byte) error { return decode(b, &m) }); err != nil {
			return info, err
		}
		if info.Last == nil {
			last := m
			info.Last = &last
		}
		if m.StoredSeq <= mark || info.Unread >= MaxUnread {
			break
		}
		if !m.Outgoing {
			info.Unread++
		}
	}
	return info, nil
}

func readMark(txn *badger.Txn, conv string) (uint64, error) {
	item, err := txn.Get([]byte(prefixReadMark + conv))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var mark uint64
	err = item.Value(func(b []byte) error {
		if len(b) != 8 {
			return errors.New("damaged profile: read mark")
		}
		mark = binary.BigEndian.Uint64(b)
		return nil
	})
	return mark, err
}

// MarkRead marks every message of conv stored so far as read.
func (s *Store) MarkRead(conv string) error {
	return s.update(func(txn *badger.Txn) error {
		info, err := conversation(txn, conv)
		if err != nil || info.Last == nil {
			return err
		}
		return txn.Set([]byte(prefixReadMark+conv), binary.BigEndian.AppendUint64(nil, info.Last.StoredSeq))
	})
}

// HistoryBefore returns up to n messages of conv stored before number
// before (0: the newest), oldest first: one page of a long conversation.
func (s *Store) HistoryBefore(conv string, before uint64, n int) ([]*Message, error) {
	var out []*Message
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := []byte("hist/" + conv + "\x00")
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: true, PrefetchValues: true})
		defer it.Close()
		start := append(append([]byte{}, prefix...), 0xff)
		if before > 0 {
			start = historyKey(conv, before-1)
		}
		for it.Seek(start); it.Valid() && len(out) < n; it.Next() {
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
