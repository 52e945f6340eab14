/** The fitness API's Node gateway (`npm run start:node`; built, `npm run serve`). */
import { runGateway } from '../../runtime/node.js';
import { fitness } from '../app.js';

await runGateway(fitness);
