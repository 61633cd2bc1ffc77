package ui

import (
	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/dialog"
	"fyne.io/fyne/v2/widget"
)

// Preferences the window keeps on this machine.
const (
	// PrefNotifications (bool): notify of messages while the window is in
	// the background.
	PrefNotifications = "notifications"
	// PrefDownloads (string): where received files land, from the next
	// start.
	PrefDownloads = "downloads"
	// The window's size when it was last closed.
	prefWidth  = "window_width"
	prefHeight = "window_height"
)

const (
	defaultWidth, defaultHeight = float32(960), float32(640)
	// minRememberedSize: a smaller window is not a size someone chose.
	minRememberedSize = float32(320)
	// notifyBodyMax is how much of a message a notification shows.
	notifyBodyMax     = 140
	notifyTitleFormat = "%s wrote to you"
)

// showSettings is the settings dialog: notifications and the downloads
// folder.
func (app *App) showSettings(downloads string) {
	prefs := app.fyne.Preferences()
	notify := widget.NewCheck("Notify me of messages while the window is in the background", func(on bool) {
		prefs.SetBool(PrefNotifications, on)
	})
	notify.SetChecked(prefs.BoolWithFallback(PrefNotifications, true))
	folder := widget.NewLabel(downloads)
	if saved := prefs.String(PrefDownloads); saved != "" && saved != downloads {
		folder.SetText(downloads + " (from the next start: " + saved + ")")
	}
	folder.Wrapping = fyne.TextWrapWord
	choose := widget.NewButton("Choose…", func() {
		dialog.ShowFolderOpen(func(u fyne.ListableURI, err error) {
			if err != nil || u == nil {
				return
			}
			prefs.SetString(PrefDownloads, u.Path())
			folder.SetText(downloads + " (from the next start: " + u.Path() + ")")
		}, app.win)
	})
	content := container.NewVBox(notify, widget.NewLabel("Received files land in:"),
		container.NewBorder(nil, nil, nil, choose, folder))
	dialog.ShowCustom("Settings", "Close", content, app.win)
}

// rememberSize restores the window's last size and keeps it when the
// window closes.
func (app *App) rememberSize() {
	prefs := app.fyne.Preferences()
	w := float32(prefs.FloatWithFallback(prefWidth, float64(defaultWidth)))
	h := float32(prefs.FloatWithFallback(prefHeight, float64(defaultHeight)))
	if w < minRememberedSize || h < minRememberedSize {
		w, h = defaultWidth, defaultHeight
	}
	app.win.Resize(fyne.NewSize(w, h))
	app.win.SetCloseIntercept(func() {
		size := app.win.Canvas().Size()
		prefs.SetFloat(prefWidth, float64(size.Width))
		prefs.SetFloat(prefHeight, float64(size.Height))
		app.win.Close()
	})
}
