"""The admin page: what the pool looks like (`view`), served behind the hub's OAuth (`handlers`)."""
