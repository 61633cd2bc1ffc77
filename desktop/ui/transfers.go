package ui

import (
	"context"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/dialog"
	"fyne.io/fyne/v2/storage"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"github.com/e2em/e2em/desktop/engine"
)

// transfersStrip shows the files on their way in the open conversation:
// a progress bar, the speed and a cancel button each, from the engine's
// file events.
type transfersStrip struct {
	app  *App
	rows map[string]*transferRow // by transfer id
	box  *fyne.Container
}

type transferRow struct {
	label  *widget.Label
	bar    *widget.ProgressBar
	cancel *widget.Button
	row    fyne.CanvasObject
}

func newTransfersStrip(app *App) *transfersStrip {
	return &transfersStrip{app: app, rows: map[string]*transferRow{}, box: container.NewVBox()}
}

// update draws transfer t as its newest event says; a finished one goes.
func (s *transfersStrip) update(t engine.Transfer) {
	r := s.rows[t.ID]
	if t.Finished() {
		if r != nil {
			s.box.Remove(r.row)
			delete(s.rows, t.ID)
		}
		return
	}
	if r == nil {
		id := t.ID
		r = &transferRow{label: widget.NewLabel(""), bar: widget.NewProgressBar()}
		r.cancel = widget.NewButtonWithIcon("", theme.CancelIcon(), func() { s.cancel(id) })
		r.row = container.NewBorder(nil, nil, nil, r.cancel, container.NewVBox(r.label, r.bar))
		s.rows[id] = r
		s.box.Add(r.row)
	}
	text := t.ProgressText()
	if t.State == engine.TransferWaiting {
		text += " — waiting: " + t.Error
	}
	r.label.SetText(text)
	if t.Total > 0 {
		r.bar.SetValue(float64(t.Done) / float64(t.Total))
	}
}

func (s *transfersStrip) cancel(id string) {
	s.app.background(func(ctx context.Context) error {
		_, err := s.app.eng.Cancel(ctx, id)
		return err
	}, func(err error) {
		if err != nil {
			s.app.chats.notice(words(err))
		}
	})
}

// attach asks for a file and sends it to the open conversation.
func (v *conversationView) attach() {
	d := dialog.NewFileOpen(func(f fyne.URIReadCloser, err error) {
		if err != nil || f == nil {
			return
		}
		path := f.URI().Path()
		f.Close()
		v.sendFile(path)
	}, v.app.win)
	if home, err := storage.ListerForURI(storage.NewFileURI(v.app.homeDir())); err == nil {
		d.SetLocation(home)
	}
	d.Show()
}

// sendFile sends the file at path to the open conversation (a person, or
// every member of the group).
func (v *conversationView) sendFile(path string) {
	conv := v.conv
	if conv.ID == "" {
		return
	}
	v.app.background(func(ctx context.Context) error {
		var err error
		if conv.Peer != "" {
			_, err = v.app.eng.SendFile(ctx, path, conv.Peer)
		} else {
			_, err = v.app.eng.SendGroupFile(ctx, path, conv.Group)
		}
		return err
	}, func(err error) {
		if err != nil {
			v.app.chats.notice("Not sent: " + words(err))
		}
	})
}

// dropped sends the files dropped on the window to the open conversation.
func (v *conversationView) dropped(_ fyne.Position, uris []fyne.URI) {
	for _, u := range uris {
		if u.Scheme() == "file" {
			v.sendFile(u.Path())
		}
	}
}
