"""K2's exchange emulator: replays recordings over a real WebSocket in each venue's protocol."""
