// The page a browser gets for an address that does not exist.

import { renderAccount } from "../ui.js";

renderAccount();
