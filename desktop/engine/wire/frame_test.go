package wire

import (
	"bufio"
	"bytes"
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
	f.Fuzz(func(t *testing.T, data []byte) {
		var p Payload
		if proto.Unmarshal(data, &p) == nil {
			_ = p.GetText().GetBody()
		}
		var e Envelope
		if proto.Unmarshal(data, &e) == nil {
			_ = e.GetRecord()
		}
	})
}
