"""The API's routers, one module per area; each is a function returning an ``APIRouter``."""
