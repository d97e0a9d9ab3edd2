"""End-to-end training on the embedded digits set."""
import numpy as np

from fastnn import Sequential
from fastnn.datasets import digits
from fastnn.layers import Dense, Flatten
from fastnn.utils import set_random_seed, to_categorical


def test_mlp_reaches_95_percent_on_the_embedded_digits():
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    set_random_seed(0)
    model = Sequential([Flatten(input_shape=(8, 8)), Dense(64, activation="relu"),
                        Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, to_categorical(y_train, 10), epochs=40, batch_size=32,
                        validation_data=(x_test, to_categorical(y_test, 10)), verbose=0)
    loss, accuracy = model.evaluate(x_test, to_categorical(y_test, 10), verbose=0)
    assert accuracy >= 0.95, accuracy
    assert history.history["loss"][-1] < history.history["loss"][0] / 5
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    assert np.mean(predicted == y_test) == accuracy
