"""One router per resource; ``filekv.service.app`` assembles them."""
