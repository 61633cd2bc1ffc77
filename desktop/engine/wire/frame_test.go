package wire

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := &Frame{Kind: &Frame_Hello{Hello: &Hello{Version: 1, From: "alice101", To: "bob102", Ephemeral: []byte{1, 2}}}}
	if err := WriteFrame(&buf, in); err != nil {
		t.Fatal(err)
	}
	WriteFrame(&buf, &Frame{Kind: &Frame_Record{Record: []byte("sealed")}})
	r := bufio.NewReader(&buf)
	out, err := ReadFrame(r)
	if err != nil || !proto.Equal(in, out) {
		t.Fatalf("%v %v", out, err)
	}
	out, err = ReadFrame(r)
	if err != nil || string(out.GetRecord()) != "sealed" {
		t.Fatalf("%v %v", out, err)
	}
	if _, err := ReadFrame(r); err == nil {
		t.Fatal("read past the end")
	}
}

func TestOversizedFrameIsRefused(t *testing.T) {
	r := bufio.NewReader(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}))
	if _, err := ReadFrame(r); err != ErrFrameTooLarge {
		t.Fatalf("want ErrFrameTooLarge, got %v", err)
	}
}

// FuzzReadFrame: any bytes from the network give a frame or an error.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, &Frame{Kind: &Frame_Hello{Hello: &Hello{From: "a", Ephemeral: make([]byte, 32)}}})
	f.Add(buf.Bytes())
	f.Add([]byte{0x03, 0x1a, 0x01, 0x00})
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for i := 0; i < 4; i++ {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			// What decodes must encode again within the limit.
			if b, err := proto.Marshal(fr); err != nil || len(b) > MaxFrame {
				t.Fatalf("decoded frame does not re-encode: %v", err)
			}
		}
	})
}

// FuzzPayload: the plaintext of a record is decoded too.
func FuzzPayload(f *testing.F) {
	b, _ := proto.Marshal(&Payload{Id: "x", From: "alice101", Kind: &Payload_Text{Text: &Text{Body: "hi", Group: "g1"}}})
	f.Add(b)
	eb, _ := proto.Marshal(&Envelope{From: "a", To: "b", Ephemeral: make([]byte, 32), Record: []byte{1}})
	f.Add(eb)
	for _, p := range []*Payload{
		{Id: "a1b2", Kind: &Payload_Ack{Ack: &Ack{Ids: []string{"x", "y"}}}},
		{Id: "a1b2", Kind: &Payload_FileOffer{FileOffer: validOffer()}},
		{Id: "a1b2", Kind: &Payload_FileChunk{FileChunk: &FileChunk{TransferId: "0123abcd", Index: 3, Sealed: []byte{1}}}},
		{Id: "a1b2", Kind: &Payload_FileCancel{FileCancel: &FileCancel{TransferId: "0123abcd", Reason: "no"}}},
		{Id: "a1b2", Kind: &Payload_Candidates{Candidates: &Candidates{Addrs: [][]byte{{4, 10, 1, 0, 2, 6, 0x0f, 0xa1}}, Nat: NATKind_NAT_PORT_KEEPING}}},
		{Id: "a1b2", Kind: &Payload_Punch{Punch: &Punch{Nonce: make([]byte, PunchNonceBytes), Step: Punch_FOUND, Port: 40000}}},
	} {
		b, _ := proto.Marshal(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var p Payload
		if proto.Unmarshal(data, &p) == nil && ValidatePayload(&p) == nil {
			// What the receive path takes is within its bounds.
			if len(p.Id) == 0 || len(p.Id) > maxIDBytes || len(p.GetText().GetBody()) > MaxTextBytes ||
				len(p.GetAck().GetIds()) > maxAckIDs || (p.GetFileChunk() != nil && p.GetFileChunk().Index >= MaxChunks) {
				t.Fatalf("accepted %v", &p)
			}
			if o := p.GetFileOffer(); o != nil && ValidateOffer(o) != nil {
				t.Fatalf("accepted a bad offer %v", o)
			}
			if c := p.GetCandidates(); c != nil && len(c.Addrs) > MaxCandidates {
				t.Fatalf("accepted %d candidates", len(c.Addrs))
			}
			if pu := p.GetPunch(); pu != nil && (len(pu.Nonce) != PunchNonceBytes || pu.Port > 65535) {
				t.Fatalf("accepted a bad punch %v", pu)
			}
		}
		var e Envelope
		if proto.Unmarshal(data, &e) == nil {
			_ = e.GetRecord()
		}
	})
}

func validOffer() *FileOffer {
	return &FileOffer{TransferId: "0123abcd", Name: "payload.bin", Size: 20 << 20, ChunkSize: ChunkSize,
		Sha256: make([]byte, 32), FileKey: make([]byte, 32), Token: make([]byte, 16)}
}

func TestValidateOfferBounds(t *testing.T) {
	if err := ValidateOffer(validOffer()); err != nil {
		t.Fatalf("a good offer refused: %v", err)
	}
	for name, spoil := range map[string]func(*FileOffer){
		"id not hex":        func(o *FileOffer) { o.TransferId = "../x" },
		"id empty":          func(o *FileOffer) { o.TransferId = "" },
		"no name":           func(o *FileOffer) { o.Name = "" },
		"huge name":         func(o *FileOffer) { o.Name = string(make([]byte, MaxFileNameBytes+1)) },
		"tiny chunks":       func(o *FileOffer) { o.ChunkSize = 1 },
		"chunks over limit": func(o *FileOffer) { o.ChunkSize = MaxChunkSize + 1 },
		"too many chunks":   func(o *FileOffer) { o.Size = uint64(MaxChunks+1) * uint64(o.ChunkSize) },
		"short hash":        func(o *FileOffer) { o.Sha256 = o.Sha256[:31] },
		"no key":            func(o *FileOffer) { o.FileKey = nil },
		"short token":       func(o *FileOffer) { o.Token = o.Token[:8] },
	} {
		o := validOffer()
		spoil(o)
		if ValidateOffer(o) == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if ChunkCount(0, ChunkSize) != 0 || ChunkCount(1, ChunkSize) != 1 || ChunkCount(ChunkSize, ChunkSize) != 1 || ChunkCount(ChunkSize+1, ChunkSize) != 2 {
		t.Fatal("ChunkCount")
	}
}

// FuzzFileOffer: a manifest from a peer decodes and validates, or is
// refused; one that validates keeps every bound.
func FuzzFileOffer(f *testing.F) {
	b, _ := proto.Marshal(&Payload{Id: "x", From: "alice101", Kind: &Payload_FileOffer{FileOffer: validOffer()}})
	f.Add(b)
	f.Add([]byte{0x62, 0x02, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var p Payload
		if proto.Unmarshal(data, &p) != nil {
			return
		}
		o := p.GetFileOffer()
		if o == nil || ValidateOffer(o) != nil {
			return
		}
		if ChunkCount(o.Size, o.ChunkSize) > MaxChunks || len(o.FileKey) != 32 || !ValidTransferID(o.TransferId) {
			t.Fatalf("an offer out of bounds validated: %v", o)
		}
	})
}

// FuzzReadFileFrame: any bytes on a file stream give frames or an error,
// never one over the limit.
func FuzzReadFileFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteFileFrame(&buf, &FileFrame{Kind: &FileFrame_Get{Get: &FileGet{TransferId: "ab", Token: make([]byte, 16), Have: []byte{3}, Window: 1 << 20}}})
	WriteFileFrame(&buf, &FileFrame{Kind: &FileFrame_Data{Data: &FileData{Index: 1, Sealed: make([]byte, 100)}}})
	WriteFileFrame(&buf, &FileFrame{Kind: &FileFrame_Credit{Credit: &FileCredit{Index: 1, Bytes: 100}}})
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for i := 0; i < 4; i++ {
			fr, err := ReadFileFrame(r)
			if err != nil {
				return
			}
			if b, err := proto.Marshal(fr); err != nil || len(b) > MaxFileFrame {
				t.Fatalf("decoded frame does not re-encode within the limit: %v", err)
			}
		}
	})
}

// What a hostile peer may put in a payload is refused before the receive
// path stores anything.
func TestValidatePayloadRefusesWhatIsOutOfBounds(t *testing.T) {
	long := strings.Repeat("x", 65)
	for name, p := range map[string]*Payload{
		"no id":            {Kind: &Payload_Text{Text: &Text{Body: "hi"}}},
		"a long id":        {Id: long, Kind: &Payload_Text{Text: &Text{Body: "hi"}}},
		"an id with a tab": {Id: "a\tb", Kind: &Payload_Text{Text: &Text{Body: "hi"}}},
		"a long text":      {Id: "a", Kind: &Payload_Text{Text: &Text{Body: strings.Repeat("x", MaxTextBytes+1)}}},
		"a group with /":   {Id: "a", Kind: &Payload_Text{Text: &Text{Body: "hi", Group: "a/b"}}},
		"many acks":        {Id: "a", Kind: &Payload_Ack{Ack: &Ack{Ids: make([]string, maxAckIDs+1)}}},
		"a bad ack id":     {Id: "a", Kind: &Payload_Ack{Ack: &Ack{Ids: []string{""}}}},
		"a chunk too far":  {Id: "a", Kind: &Payload_FileChunk{FileChunk: &FileChunk{TransferId: "ab", Index: MaxChunks}}},
		"a bad transfer":   {Id: "a", Kind: &Payload_FileCancel{FileCancel: &FileCancel{TransferId: "XYZ"}}},
		"nothing":          {Id: "a"},
	} {
		if ValidatePayload(p) == nil {
			t.Errorf("%s was accepted", name)
		}
	}
	if err := ValidatePayload(&Payload{Id: "0123abcd", Kind: &Payload_Text{Text: &Text{Body: "hi", Group: "g1"}}}); err != nil {
		t.Fatalf("an ordinary message was refused: %v", err)
	}
}
